"""Find the labelled files in a data folder.

Accepted layouts (hidden files and folders are ignored everywhere):

* ``root/<class>/*`` — no validation split; :func:`stratified_split` makes one;
* ``root/{train,val}/<class>/*`` — ``valid/``, ``validation/`` and ``test/`` also name the
  held-out split (the first present of val, valid, validation, test is used for validation).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def samples(self) -> list[Sample]:
        return self.train + self.val


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_files(folder: Path, split: str) -> list[Sample]:
    samples = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p)):
        for file in sorted(class_dir.rglob("*")):
            rel_parts = file.relative_to(class_dir).parts
            if file.is_file() and all(not part.startswith(".") for part in rel_parts):
                samples.append(Sample(file, class_dir.name, split))
    return samples


def discover(root: str | Path, seed: int = 0, val_fraction: float = 0.2) -> DatasetLayout:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist or is not a directory")
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and _visible(p)}
    train_dir = next((subdirs[n] for n in TRAIN_NAMES if n in subdirs), None)
    if train_dir is not None:
        val_dir = next((subdirs[n] for n in VAL_NAMES if n in subdirs), None)
        train = _class_files(train_dir, "train")
        ignored = sorted(p.name for p in subdirs.values() if p not in (train_dir, val_dir))
        if val_dir is not None:
            val = _class_files(val_dir, "val")
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
        layout = stratified_split(root, _class_files(root, "train"), seed, val_fraction)
    if len(layout.classes) < 2:
        raise DataError(f"{root}: found {len(layout.classes)} class folder(s) with files; expected "
                        "at least 2, laid out as root/<class>/* or root/train/<class>/*")
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
