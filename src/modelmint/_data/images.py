"""Image folders → :class:`TaskData` for training.

Discovery and the data check are shared (:mod:`.layout`, :mod:`.check`); a class folder left
without a usable training image stops the load here, before any training. This module also
adds ``--group-by`` (which re-splits the pooled files by group) and keeps the decoded 224-pixel
crops (``extra["crops"]``) so every image candidate reuses one decoding pass.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .check import check_dataset
from .dataset import TaskData
from .layout import DatasetLayout, Sample, discover, split_items
from .preprocess import ImageSpec

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Both image backbones resize the shorter side to 256 and crop 224; only mean/std differ, and
# those are applied later (to_tensor), so one set of crops serves both.
CROP_SPEC = ImageSpec(resize=256, crop=224)


def _regroup(layout: DatasetLayout, seed: int, group_by: str) -> tuple[DatasetLayout, str]:
    """Pool train and val files and split them again by group."""
    root, classes = layout.root, layout.classes
    by_rel = {s.rel(root): s for s in layout.samples}
    items = [(rel, classes.index(s.label)) for rel, s in by_rel.items()]
    train, val, _, note = split_items(items, seed=seed, group_by=group_by,
                                      group_key=lambda rel: Path(rel).name, labels=classes)
    if layout.split_source == "folders":
        note += " (the train/val folders were pooled and re-split by group)"
    new = DatasetLayout(
        root, classes,
        [Sample(by_rel[rel].path, classes[y], "train") for rel, y in train],
        [Sample(by_rel[rel].path, classes[y], "val") for rel, y in val],
        note, layout.ignored_dirs, layout.empty_class_dirs)
    return new, note


def load_image_data(path: str | Path, *, seed: int = 0, group_by: str | None = None,
                    strict: bool = False) -> TaskData:
    layout = discover(path, seed=seed)
    note = ("the data's own train/val folders" if layout.split_source == "folders"
            else f"stratified random {layout.split_source.split(' ', 1)[1]}")
    if group_by:
        layout, note = _regroup(layout, seed, group_by)
    report = check_dataset(layout, CROP_SPEC, strict=strict, keep_crops=True)
    report.require_trainable()
    if not report.val:
        raise DataError(f"{layout.root}: no usable validation images; add a val/ folder or more "
                        "images per class")
    root, labels = layout.root, layout.classes
    groups = {}
    if group_by:
        from .layout import compile_group_by, group_of

        pattern = compile_group_by(group_by)
        groups = {s.rel(root): group_of(s.path.name, pattern) for s in report.train + report.val}
    return TaskData(
        task="image-classification", root=root, labels=list(labels),
        train=[(s.rel(root), labels.index(s.label)) for s in report.train],
        val=[(s.rel(root), labels.index(s.label)) for s in report.val],
        split_note=note, groups=groups,
        warnings=[*report.warnings, *(f"{i.path}: {i.reason}" for i in report.issues)],
        extra={"report": report, "crops": report.crops, "skipped": report.skipped,
               "fingerprint": report.fingerprint},
    )
