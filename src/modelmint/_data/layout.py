"""Find the labelled files in a data folder.

Accepted layouts (hidden files and folders are ignored everywhere):

* ``root/<class>/*`` — no validation split; :func:`stratified_split` makes one;
* ``root/{train,val}/<class>/*`` — ``valid/``, ``validation/`` and ``test/`` also name the
  held-out split (the first present of val, valid, validation, test is used for validation).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    split: str  # "train" | "val"

    def rel(self, root: Path) -> str:
        return self.path.relative_to(root).as_posix()


@dataclass
class DatasetLayout:
    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    split_source: str  # "folders" or "stratified 80/20 (seed N)"
    ignored_dirs: list[str] = field(default_factory=list)
    # Class folders without a visible file ("bird" or "train/bird"): a class that cannot be
    # learned, which the data check reports instead of dropping it unseen.
    empty_class_dirs: list[str] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        return self.train + self.val


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_files(folder: Path, split: str, empty: list[Path]) -> list[Sample]:
    """The visible files under each class folder of ``folder``; class folders with none are
    appended to ``empty``."""
    samples: list[Sample] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p)):
        found = len(samples)
        for file in sorted(class_dir.rglob("*")):
            rel_parts = file.relative_to(class_dir).parts
            if file.is_file() and all(not part.startswith(".") for part in rel_parts):
                samples.append(Sample(file, class_dir.name, split))
        if len(samples) == found:
            empty.append(class_dir)
    return samples


def discover(root: str | Path, seed: int = 0, val_fraction: float = 0.2) -> DatasetLayout:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist or is not a directory")
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and _visible(p)}
    train_dir = next((subdirs[n] for n in TRAIN_NAMES if n in subdirs), None)
    empty: list[Path] = []
    if train_dir is not None:
        val_dir = next((subdirs[n] for n in VAL_NAMES if n in subdirs), None)
        train = _class_files(train_dir, "train", empty)
        ignored = sorted(p.name for p in subdirs.values() if p not in (train_dir, val_dir))
        if val_dir is not None:
            val = _class_files(val_dir, "val", empty)
            classes = sorted({s.label for s in train})
            unknown = sorted({s.label for s in val} - set(classes))
            if unknown:
                raise DataError(f"{val_dir}: classes {unknown} have no training folder in "
                                f"{train_dir}; expected the same class folders in both")
            layout = DatasetLayout(root, classes, train, val, "folders", ignored)
        else:
            layout = stratified_split(root, train, seed, val_fraction)
            layout.ignored_dirs = ignored
    else:
        layout = stratified_split(root, _class_files(root, "train", empty), seed, val_fraction)
    layout.empty_class_dirs = [p.relative_to(root).as_posix() for p in empty]
    if len(layout.classes) < 2:
        also = (f" and {len(empty)} empty ({', '.join(f'{d}/' for d in layout.empty_class_dirs)})"
                if empty else "")
        raise DataError(f"{root}: found {len(layout.classes)} class folder(s) with files "
                        f"({', '.join(f'{c}/' for c in layout.classes) or 'none'}){also}; "
                        "expected at least 2, laid out as root/<class>/* or "
                        "root/train/<class>/*")
    return layout


def stratified_split(root: Path, samples: list[Sample], seed: int,
                     val_fraction: float) -> DatasetLayout:
    """Seeded per-class split, so every class is in both parts in its own proportion."""
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        files = sorted(by_class[label], key=lambda s: s.path.as_posix())
        rng.shuffle(files)
        n_val = round(len(files) * val_fraction)
        if len(files) >= 2:
            n_val = max(1, n_val)
        val += [Sample(s.path, label, "val") for s in files[:n_val]]
        train += [Sample(s.path, label, "train") for s in files[n_val:]]
    return DatasetLayout(root, sorted(by_class), train, val,
                         f"stratified {1 - val_fraction:.0%}/{val_fraction:.0%} (seed {seed})")


# --- task-independent splitting: --group-by and --reject-dir ---------------------------------
# These work on ``(item id, class index)`` lists, so image, sound and text loaders share them.

Item = tuple[str, int]


def group_of(item: str, pattern: re.Pattern[str]) -> str:
    """The group an item belongs to: the regex's first capture group (or whole match)."""
    match = pattern.search(item)
    if match is None:
        raise DataError(f"--group-by {pattern.pattern!r}: does not match item {item!r}; every "
                        "file name (or row id) must contain its group")
    return match.group(1) if pattern.groups else match.group(0)


def compile_group_by(group_by: str) -> re.Pattern[str]:
    try:
        return re.compile(group_by)
    except re.error as exc:
        raise DataError(f"--group-by {group_by!r}: not a valid regular expression ({exc})") from exc


def split_items(items: list[Item], *, seed: int, group_by: str | None = None,
                val_fraction: float = 0.2,
                group_key: Callable[[str], str] | None = None,
                labels: Sequence[str] = ()
                ) -> tuple[list[Item], list[Item], dict[str, str], str]:
    """Split labelled items into (train, val, groups, split note).

    Without ``group_by``: seeded stratified split (every class in both parts). With it: whole
    groups go to one side, so no group (speaker, source, patient...) is on both sides; groups
    are drawn in a seeded order and one is added to validation only while that brings the
    validation share closer to ``val_fraction``. ``group_key`` maps an item id to the text the
    regex is matched against (default: the item id itself, e.g. a relative path). A grouped
    split that leaves a class without a training item is refused (``labels`` name the classes
    in that message): the model could never predict it.
    """
    if not group_by:
        by_class: dict[int, list[Item]] = defaultdict(list)
        for item in items:
            by_class[item[1]].append(item)
        rng = random.Random(seed)
        train: list[Item] = []
        val: list[Item] = []
        for label in sorted(by_class):
            members = sorted(by_class[label])
            rng.shuffle(members)
            n_val = round(len(members) * val_fraction)
            if len(members) >= 2:
                n_val = max(1, n_val)
            val += members[:n_val]
            train += members[n_val:]
        note = f"stratified random {1 - val_fraction:.0%}/{val_fraction:.0%} (seed {seed})"
        return train, val, {}, note
    pattern = compile_group_by(group_by)
    key = group_key or (lambda item: item)
    groups = {item: group_of(key(item), pattern) for item, _ in items}
    names = sorted(set(groups.values()))
    if len(names) < 2:
        raise DataError(f"--group-by {group_by!r}: found {len(names)} group(s) {names}; "
                        "a grouped split needs at least 2")
    sizes = {name: 0 for name in names}
    for group in groups.values():
        sizes[group] += 1
    order = names[:]
    random.Random(seed).shuffle(order)
    target = val_fraction * len(items)
    val_groups: set[str] = set()
    n_val = 0
    for name in order:
        # Always hold out at least one group; keep at least one for training.
        if val_groups and abs(n_val + sizes[name] - target) >= abs(n_val - target):
            continue
        if len(val_groups) + 1 >= len(names):
            break
        val_groups.add(name)
        n_val += sizes[name]
    train = [it for it in items if groups[it[0]] not in val_groups]
    val = [it for it in items if groups[it[0]] in val_groups]
    untrained = sorted({y for _, y in val} - {y for _, y in train})
    if untrained:
        names = [labels[y] if y < len(labels) else str(y) for y in untrained]
        raise DataError(f"--group-by {group_by!r}: every item of class(es) {names} is in a "
                        f"held-out group ({', '.join(sorted(val_groups))}), so none is left for "
                        "training; give those classes items from more groups, or change the "
                        "pattern or --seed")
    note = (f"grouped (--group-by {group_by!r}): {len(val_groups)} of {len(names)} groups held "
            f"out for validation ({', '.join(sorted(val_groups))}); no group on both sides")
    return train, val, groups, note


def add_reject_class(data: Any, reject_dir: str | Path, *, suffixes: frozenset[str], seed: int,
                     group_by: str | None = None, label: str = "other") -> None:
    """Append a "none of these" class made of the files under ``reject_dir`` (any layout).

    ``data`` is a :class:`modelmint._tasks.contract.TaskData`; its reject items get *absolute*
    paths as item ids (``data.root / "/abs/path"`` is that path), and are split with the same
    rule as the rest (grouped when ``group_by`` is given, on the file name).
    """
    folder = Path(reject_dir).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"--reject-dir {reject_dir}: not a folder")
    if label in data.labels:
        raise DataError(f"--reject-dir: the data already has a class named {label!r}; rename it")
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in suffixes
                   and not any(p.startswith(".") for p in f.relative_to(folder).parts))
    if not files:
        raise DataError(f"--reject-dir {folder}: no {'/'.join(sorted(suffixes))} files in it")
    root = Path(data.root).resolve()
    overlap = [f for f in files if f.is_relative_to(root) and not folder.is_relative_to(root)]
    if overlap or folder == root:
        raise DataError(f"--reject-dir {folder}: must not be the data folder itself")
    index = len(data.labels)
    items = [(f.as_posix(), index) for f in files]
    # Group on the name only, so the absolute folder part cannot decide a group.
    train, val, groups, _ = split_items(items, seed=seed, group_by=group_by,
                                        group_key=lambda item: Path(item).name)
    data.labels.append(label)
    data.reject_label = label
    data.train.extend(train)
    data.val.extend(val)
    data.groups.update(groups)
    data.split_note += f"; {len(files)} out-of-domain files from {folder} as class {label!r}"
