"""The data check: what a person should know about their folder before training on it.

Errors (unreadable or non-image files) are always skipped. Warnings (exact duplicates, the same
content in train and val — leakage —, format outliers, tiny or huge images) are reported and
kept, unless ``strict`` asks to skip everything flagged. A class folder left without a usable
training image (an ``annotations/`` folder of XML files beside ``images/``, a folder of broken
files, an empty folder) blocks training: :meth:`DataReport.require_trainable` says what each
class folder held. Decoding runs on a thread pool: Pillow releases the GIL while it decodes and
resizes.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DataError, ImageDecodeError
from .layout import DatasetLayout, Sample
from .preprocess import ImageSpec, open_image, resize_and_crop

TINY_SIDE = 32  # below this an image carries almost no signal at 224x224
HUGE_PIXELS = 40_000_000
MAX_FILE_BYTES = 256 * 2**20
OUTLIER_SHARE = 0.05  # a format used by < 5% of files while one format has >= 80%
MIN_PER_CLASS = 20
MIN_VAL = 30
IMBALANCE_RATIO = 3.0
# Files that a detection or segmentation data set keeps beside its images.
ANNOTATION_SUFFIXES = frozenset({".xml", ".json", ".txt", ".csv", ".yaml", ".yml"})


@dataclass
class FileIssue:
    path: str  # relative to the data root
    severity: str  # "error" (skipped) | "warning"
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "severity": self.severity, "reason": self.reason}


@dataclass
class _FileInfo:
    sample: Sample
    digest: str = ""
    fmt: str = ""
    size: tuple[int, int] = (0, 0)
    crop: Image.Image | None = None
    error: str = ""


@dataclass
class DataReport:
    layout: DatasetLayout
    train: list[Sample]
    val: list[Sample]
    issues: list[FileIssue]
    warnings: list[str]  # dataset-level
    counts: dict[str, dict[str, int]]  # split -> class -> usable files
    fingerprint: str
    crops: dict[str, Image.Image] = field(default_factory=dict, repr=False)
    blocking: list[str] = field(default_factory=list)  # class folders that cannot be learned
    found: list[str] = field(default_factory=list)  # what each class folder held

    @property
    def skipped(self) -> list[str]:
        kept = {s.rel(self.layout.root) for s in self.train + self.val}
        return sorted({i.path for i in self.issues} - kept)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.layout.root),
            "classes": self.layout.classes,
            "split": self.layout.split_source,
            "counts": self.counts,
            "issues": [i.to_json() for i in self.issues],
            "skipped": self.skipped,
            "warnings": self.warnings,
            "blocking": self.blocking,
            "fingerprint": self.fingerprint,
        }

    def require_trainable(self) -> None:
        """Raise :class:`DataError` when a class folder has no usable training image: a model
        trained without it would report a perfect score on the classes that are left."""
        if not self.blocking:
            return
        raise DataError(f"{self.layout.root}: cannot train: {'; '.join(self.blocking)}. Found: "
                        f"{'; '.join(self.found)}. Every class folder needs usable images; "
                        "remove or fix the ones named")


def _inspect(sample: Sample, spec: ImageSpec, keep_crop: bool) -> _FileInfo:
    info = _FileInfo(sample)
    try:
        size = sample.path.stat().st_size
        if size > MAX_FILE_BYTES:  # read whole and hashed, on several threads: bound it
            info.error = (f"{size / 2**20:.0f} MiB, more than an image file may be "
                          f"({MAX_FILE_BYTES >> 20} MiB)")
            return info
        blob = sample.path.read_bytes()
    except OSError as exc:
        info.error = f"unreadable file ({exc.strerror})"
        return info
    info.digest = hashlib.sha256(blob).hexdigest()
    try:
        with Image.open(sample.path) as raw:
            info.fmt, info.size = raw.format or "?", raw.size
        img = open_image(blob, spec, name=sample.path.name)
    except ImageDecodeError as exc:
        info.error = f"not a readable image: {exc}"
        return info
    except (OSError, ValueError, SyntaxError) as exc:
        info.error = f"not a readable image ({type(exc).__name__}: {exc})"
        return info
    if keep_crop:
        info.crop = resize_and_crop(img, spec)
    return info


def check_dataset(layout: DatasetLayout, spec: ImageSpec | None = None, *, strict: bool = False,
                  keep_crops: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> DataReport:
    spec = spec or ImageSpec()
    root = layout.root
    samples = layout.samples
    workers = max(1, min(8, os.cpu_count() or 1))
    infos: list[_FileInfo] = []
    with ThreadPoolExecutor(workers) as pool:
        for i, info in enumerate(pool.map(lambda s: _inspect(s, spec, keep_crops), samples)):
            infos.append(info)
            if progress:
                progress(i + 1, len(samples))

    issues: list[FileIssue] = []
    flagged: set[str] = set()

    def flag(info: _FileInfo, severity: str, reason: str) -> None:
        issues.append(FileIssue(info.sample.rel(root), severity, reason))
        if severity == "error" or strict:
            flagged.add(info.sample.rel(root))

    good = []
    for info in infos:
        if info.error:
            flag(info, "error", info.error + " — skipped")
        else:
            good.append(info)

    formats = Counter(i.fmt for i in good)
    if formats:
        main_fmt, main_n = formats.most_common(1)[0]
        for info in good:
            n = formats[info.fmt]
            if info.fmt != main_fmt and main_n >= 0.8 * len(good) and n < OUTLIER_SHARE * len(good):
                flag(info, "warning", f"format outlier: {info.fmt} among {main_n} {main_fmt} "
                     "files (placeholder or wrong file?)")
    for info in good:
        w, h = info.size
        if min(w, h) < TINY_SIDE:
            flag(info, "warning", f"tiny image {w}x{h} (shorter side < {TINY_SIDE} px)")
        elif w * h > HUGE_PIXELS:
            flag(info, "warning", f"huge image {w}x{h} (> {HUGE_PIXELS // 1_000_000} MP)")

    first_by_hash: dict[str, _FileInfo] = {}
    for info in good:
        seen = first_by_hash.setdefault(info.digest, info)
        if seen is info:
            continue
        a, b = seen.sample, info.sample
        if a.split != b.split:
            reason = f"same content in train and val (leakage): {a.rel(root)}"
        elif a.label != b.label:
            reason = f"same content with another label ({a.label}): {a.rel(root)}"
        else:
            reason = f"exact duplicate of {a.rel(root)}"
        # In strict mode drop the train-side copy of a leak, so validation stays intact.
        target = info if not (a.split == "train" and b.split == "val") else _info_of(good, a)
        issues.append(FileIssue(target.sample.rel(root), "warning", reason))
        if strict:
            flagged.add(target.sample.rel(root))

    keep = [i for i in good if i.sample.rel(root) not in flagged]
    train = [i.sample for i in keep if i.sample.split == "train"]
    val = [i.sample for i in keep if i.sample.split == "val"]
    counts: dict[str, dict[str, int]] = {"train": defaultdict(int), "val": defaultdict(int)}
    for s in train + val:
        counts[s.split][s.label] += 1
    counts = {split: {c: counts[split].get(c, 0) for c in layout.classes} for split in counts}
    fingerprint = hashlib.sha256("\n".join(
        sorted(f"{i.sample.rel(root)}:{i.sample.label}:{i.digest}" for i in keep)).encode()
    ).hexdigest()
    blocking, found = _class_folders(layout, infos, train, val)
    report = DataReport(layout, train, val, issues,
                        [*(f"cannot train: {b}" for b in blocking),
                         *_dataset_warnings(counts, layout)],
                        counts, fingerprint, blocking=blocking, found=found)
    if keep_crops:
        report.crops = {i.sample.rel(root): i.crop for i in keep if i.crop is not None}
    return report


def _class_folders(layout: DatasetLayout, infos: list[_FileInfo], train: list[Sample],
                   val: list[Sample]) -> tuple[list[str], list[str]]:
    """(what blocks training, what each class folder held); a class folder is ``cat/`` or
    ``train/cat/``. A class blocks training when no usable image of it is left for training."""
    root = layout.root
    held: dict[str, list[_FileInfo]] = defaultdict(list)
    folders_of: dict[str, list[str]] = defaultdict(list)
    for info in infos:
        folder = _folder_of(info.sample, root)
        if folder not in held:
            folders_of[info.sample.label].append(folder)
        held[folder].append(info)
    kept = Counter(_folder_of(s, root) for s in train + val)
    n_train = Counter(s.label for s in train)
    blocking, found = [], []
    for empty in layout.empty_class_dirs:
        found.append(f"{empty}/: empty")
        if empty.rsplit("/", 1)[-1] not in layout.classes:
            blocking.append(f"{empty}/ is empty")
    for folder in sorted(held):
        bad = [i for i in held[folder] if i.error]
        found.append(f"{folder}/: {kept[folder]} usable image(s) of {len(held[folder])} file(s)"
                     + (f" ({_kinds(bad)} unreadable)" if bad else ""))
    for label in layout.classes:
        if n_train[label]:
            continue
        in_val = sum(kept[f] for f in folders_of[label])
        if in_val:
            blocking.append(f"class {label!r}: its {in_val} usable image(s) are all in "
                            "validation, none in training")
        else:
            blocking += [_unusable(folder, held[folder], root) for folder in folders_of[label]]
    return blocking, found


def _folder_of(sample: Sample, root: Path) -> str:
    parts = sample.rel(root).split("/")
    return "/".join(parts[:parts.index(sample.label) + 1])


def _unusable(folder: str, files: list[_FileInfo], root: Path) -> str:
    bad = sorted((i for i in files if i.error), key=lambda i: i.sample.path)
    if len(bad) < len(files):
        return f"{folder}/: {len(files)} file(s), none left after the check (--strict)"
    image_like = set(Image.registered_extensions())
    if not any(i.sample.path.suffix.lower() in image_like for i in bad):
        what = f"{_kinds(bad)}, no images"
        if all(i.sample.path.suffix.lower() in ANNOTATION_SUFFIXES for i in bad):
            what += (" (the annotations of a detection data set? Image classification expects "
                     "root/<class>/<images>)")
        return f"{folder}/: {what}"
    return (f"{folder}/: {_kinds(bad)}, none readable (e.g. {bad[0].sample.rel(root)}: "
            f"{bad[0].error})")


def _kinds(infos: list[_FileInfo]) -> str:
    """``200 .xml files`` or ``3 .jpg, 1 .txt files``."""
    counts = Counter(i.sample.path.suffix.lower() or "(no extension)" for i in infos)
    listed = ", ".join(f"{n} {suffix}" for suffix, n in counts.most_common())
    return f"{listed} file{'s' if len(infos) != 1 else ''}"


def _info_of(infos: list[_FileInfo], sample: Sample) -> _FileInfo:
    return next(i for i in infos if i.sample == sample)


def _dataset_warnings(counts: dict[str, dict[str, int]], layout: DatasetLayout) -> list[str]:
    out = []
    totals = {c: counts["train"][c] + counts["val"][c] for c in layout.classes}
    for c, n in totals.items():
        if n < MIN_PER_CLASS:
            out.append(f"class {c!r} has only {n} usable images (< {MIN_PER_CLASS}); "
                       "accuracy on it will be unreliable")
        if counts["val"][c] == 0:
            out.append(f"class {c!r} has no validation images; its accuracy cannot be measured")
    n_val = sum(counts["val"].values())
    if n_val < MIN_VAL:
        out.append(f"validation set has only {n_val} images (< {MIN_VAL}); "
                   "accuracy figures will be noisy")
    nonzero = [n for n in totals.values() if n]
    if nonzero and max(nonzero) / min(nonzero) > IMBALANCE_RATIO:
        big = max(totals, key=lambda c: totals[c])
        small = min(totals, key=lambda c: totals[c] or 10**9)
        out.append(f"classes are imbalanced: {big!r} has {totals[big]} images, {small!r} "
                   f"{totals[small]} (ratio > {IMBALANCE_RATIO:g})")
    return out
