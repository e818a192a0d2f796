"""The data check: what a person should know about their folder before training on it.

Errors (unreadable or non-image files) are always skipped. Warnings (exact duplicates, the same
content in train and val — leakage —, format outliers, tiny or huge images) are reported and
kept, unless ``strict`` asks to skip everything flagged. Decoding runs on a thread pool: Pillow
releases the GIL while it decodes and resizes.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import ImageDecodeError
from .layout import DatasetLayout, Sample
from .preprocess import ImageSpec, open_image, resize_and_crop

TINY_SIDE = 32  # below this an image carries almost no signal at 224x224
HUGE_PIXELS = 40_000_000
OUTLIER_SHARE = 0.05  # a format used by < 5% of files while one format has >= 80%
MIN_PER_CLASS = 20
MIN_VAL = 30
IMBALANCE_RATIO = 3.0


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
            "fingerprint": self.fingerprint,
        }


def _inspect(sample: Sample, spec: ImageSpec, keep_crop: bool) -> _FileInfo:
    info = _FileInfo(sample)
    try:
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
    report = DataReport(layout, train, val, issues, _dataset_warnings(counts, layout), counts,
                        fingerprint)
    if keep_crops:
        report.crops = {i.sample.rel(root): i.crop for i in keep if i.crop is not None}
    return report


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
