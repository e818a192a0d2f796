"""Annotated image folders (VOC, COCO, YOLO) -> :class:`TaskData` for object detection.

The data check: every image is decoded with the product's guards to learn its upright size;
undecodable images are skipped, boxes are clipped to the image or dropped (inverted, empty,
outside it, or of a label not in the class list), exact duplicate images are kept once, images
without boxes are kept as negatives. An image without an annotation file (VOC, YOLO) is reported
and kept as a negative: annotation tools write no file for an image with nothing on it, and a
detector needs such images to learn what is not an object. Every finding becomes a warning;
``strict`` (as for classification) also skips every image the check flagged, keeping only
images whose annotations needed no repair. The split is by image, seeded, roughly
stratified by each image's most frequent class, or by group (``group_by``), with duplicates
already removed so no image content is on both sides.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, ImageDecodeError
from .annotations import AnnotatedImage, detect_format
from .annotations import read_layout as read_annotated_layout
from .annotations.model import number
from .dataset import TaskData
from .images import IMAGE_SUFFIXES
from .layout import split_items
from .preprocess import open_image

TASK = "object-detection"
IMBALANCE_RATIO = 10.0
EXAMPLES = 3  # file names quoted per kind of finding
STRICT = "--strict: flagged images (skipped)"

# Kinds of finding, as the warnings name them.
ANNOTATION = "annotation problems (skipped)"
NO_IMAGE = "annotations without an image (skipped)"
NO_ANNOTATION = "images without an annotation file (kept as negatives)"
UNREADABLE = "unreadable images (skipped)"
RESCALED = "annotated size differs from the image (boxes rescaled)"
CLIPPED = "boxes reaching outside the image (clipped)"
OUTSIDE = "boxes wholly outside the image (dropped)"
INVERTED = "inverted or empty boxes (dropped)"
UNKNOWN_LABEL = "boxes with a label not in the class list (dropped)"
DUPLICATE = "duplicate images (one copy kept)"


def detection_evidence(root: Path) -> int:
    """0 without a detection layout; else more than image classification's evidence (the
    number of image files), so an annotated folder is never taken for class folders."""
    try:
        if detect_format(Path(root)) is None:
            return 0
        images = sum(1 for f in Path(root).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    except OSError:
        return 0
    return 2 * images + 1


class Findings:
    """What the check found, by kind: (file, message) pairs in the order met."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def add(self, kind: str, file: str, message: str) -> None:
        self.by_kind[kind].append((file, message))

    def count(self, kind: str) -> int:
        return len(self.by_kind.get(kind, []))

    def messages(self) -> list[str]:
        return [m for kind in self.by_kind for _, m in self.by_kind[kind]]

    def summary(self) -> list[str]:
        out = []
        for kind, found in self.by_kind.items():
            files = list(dict.fromkeys(f for f, _ in found))
            more = ", ..." if len(files) > EXAMPLES else ""
            out.append(f"{kind}: {len(found)} ({', '.join(files[:EXAMPLES])}{more}); "
                       f"e.g. {found[0][1]}")
        return out


def _reader_kind(message: str) -> str:
    if "image without an annotation file" in message and "kept as a negative" in message:
        return NO_ANNOTATION
    if "annotation without an image" in message or "no instances*.json lists" in message:
        return NO_IMAGE
    return ANNOTATION


@dataclass
class _Decoded:
    digest: str = ""
    width: int = 0
    height: int = 0
    error: str = ""


def _decode(path: Path, rel: str) -> _Decoded:
    try:
        blob = path.read_bytes()
        picture = open_image(blob, name=rel)
    except ImageDecodeError as exc:
        return _Decoded(error=str(exc))
    except OSError as exc:
        return _Decoded(error=f"{rel}: unreadable file ({exc.strerror})")
    width, height = picture.size
    picture.close()
    return _Decoded(hashlib.sha256(blob).hexdigest(), width, height)


def _check_boxes(image: AnnotatedImage, real: _Decoded, classes: list[str],
                 found: Findings) -> tuple[list[list[float]], list[int]]:
    """The image's usable boxes in pixels of its upright decoded picture, and their labels."""
    width, height = real.width, real.height
    sx = sy = 1.0
    if (image.width, image.height) != (width, height):
        sx, sy = width / image.width, height / image.height
        turned = (" (EXIF orientation turns it? check its boxes)"
                  if (image.height, image.width) == (width, height) else "")
        found.add(RESCALED, image.file, f"{image.file}: annotated as {image.width}x"
                  f"{image.height}, the image is {width}x{height}{turned}; boxes rescaled")
    boxes: list[list[float]] = []
    labels: list[int] = []
    for i, box in enumerate(image.boxes, 1):
        where = f"{image.file}: box {i} ({box.label})"
        x1, y1, x2, y2 = box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy
        coords = ", ".join(number(v) for v in (x1, y1, x2, y2))
        if box.label not in classes:
            found.add(UNKNOWN_LABEL, image.file, f"{where}: label not in the class list "
                      f"({', '.join(classes)}); dropped")
            continue
        if x2 <= x1 or y2 <= y1:
            found.add(INVERTED, image.file, f"{where} ({coords}) is inverted or empty; "
                      "expected x1 < x2 and y1 < y2; dropped")
            continue
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if cx2 <= cx1 or cy2 <= cy1:
            found.add(OUTSIDE, image.file, f"{where} ({coords}) lies outside the {width}x"
                      f"{height} image; dropped")
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            found.add(CLIPPED, image.file, f"{where} ({coords}) reaches outside the {width}x"
                      f"{height} image; clipped")
        boxes.append([cx1, cy1, cx2, cy2])
        labels.append(classes.index(box.label))
    return boxes, labels


def load_detection_data(root: Path, *, seed: int = 0, group_by: str | None = None,
                        strict: bool = False, val_fraction: float = 0.2) -> TaskData:
    aset = read_annotated_layout(Path(root))
    found = Findings()
    for message in aset.findings:
        found.add(_reader_kind(message), message.split(": ", 1)[0], message)
    classes = aset.classes
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(lambda im: _decode(aset.root / im.file, im.file), aset.images))
    targets: dict[str, dict[str, Any]] = {}
    first_of: dict[str, str] = {}
    duplicates: list[list[str]] = []
    skipped: list[str] = []
    for image, real in zip(aset.images, decoded, strict=True):
        if real.error:
            found.add(UNREADABLE, image.file, f"{real.error}; skipped")
            skipped.append(image.file)
            continue
        boxes, labels = _check_boxes(image, real, classes, found)
        kept = first_of.setdefault(real.digest, image.file)
        if kept != image.file:
            same = (" with other boxes" if boxes != targets[kept]["boxes"] or
                    labels != targets[kept]["labels"] else "")
            found.add(DUPLICATE, image.file, f"{image.file}: the same bytes as {kept}{same}; "
                      f"only {kept} kept")
            duplicates.append([kept, image.file])
            continue
        targets[image.file] = {"boxes": boxes, "labels": labels, "width": real.width,
                               "height": real.height}
    if strict:
        flagged = [f for kind, entries in found.by_kind.items() if kind != DUPLICATE
                   for f, _ in entries if f in targets]
        for file in dict.fromkeys(flagged):
            del targets[file]
            skipped.append(file)
            found.add(STRICT, file, f"{file}: flagged by the data check; skipped")
    per_class = _per_class(targets, classes)
    _require_trainable(aset.root, aset.format, classes, targets, per_class)
    train, val, groups, note = _split(aset.root, targets, classes, seed, group_by, val_fraction)
    warnings = found.summary() + _imbalance(per_class)
    negatives = sum(1 for t in targets.values() if not t["boxes"])
    report = {
        "format": aset.format, "root": str(aset.root), "classes": classes,
        "images": len(targets), "train_images": len(train), "val_images": len(val),
        "boxes": sum(len(t["boxes"]) for t in targets.values()),
        "per_class_boxes": {c: per_class[c][0] for c in classes},
        "per_class_images": {c: per_class[c][1] for c in classes},
        "negatives": negatives, "clipped": found.count(CLIPPED), "rescaled": found.count(RESCALED),
        "dropped": {"inverted_or_empty": found.count(INVERTED),
                    "outside_image": found.count(OUTSIDE),
                    "label_not_in_classes": found.count(UNKNOWN_LABEL)},
        "skipped_files": skipped + [f for f, _ in found.by_kind.get(NO_IMAGE, [])]
        + [f for f, _ in found.by_kind.get(ANNOTATION, [])],
        "negatives_without_annotation_file": found.count(NO_ANNOTATION),
        "duplicates": duplicates, "findings": {k: len(v) for k, v in found.by_kind.items()},
    }
    return TaskData(TASK, aset.root, classes, train, val, note, groups=groups,
                    warnings=warnings, extra={"detection_report": report, "seed": seed})


def _per_class(targets: dict[str, dict[str, Any]],
               classes: list[str]) -> dict[str, tuple[int, int]]:
    """class -> (boxes, images with at least one of its boxes)."""
    boxes: Counter[int] = Counter()
    images: Counter[int] = Counter()
    for target in targets.values():
        boxes.update(target["labels"])
        images.update(set(target["labels"]))
    return {c: (boxes[i], images[i]) for i, c in enumerate(classes)}


def _require_trainable(root: Path, fmt: str, classes: list[str],
                       targets: dict[str, dict[str, Any]],
                       per_class: dict[str, tuple[int, int]]) -> None:
    positives = sum(1 for t in targets.values() if t["boxes"])
    found = (f"found {len(targets)} usable image(s) in {fmt.upper()} layout, {positives} with "
             "boxes; boxes per class: "
             + (", ".join(f"{c} {n}" for c, (n, _) in per_class.items()) or "no classes"))
    if not classes:
        raise DataError(f"{root}: no classes: {found}; expected labelled boxes")
    empty = [c for c, (n, _) in per_class.items() if n == 0]
    if empty:
        raise DataError(f"{root}: class(es) {', '.join(map(repr, empty))} have no usable box: "
                        f"{found}; every class needs boxes (or remove it from the class list)")
    if positives < 2:
        raise DataError(f"{root}: {found}; expected at least 2 images with boxes, one to "
                        "train on and one to validate on")


def _dominant(target: dict[str, Any], negative: int) -> int:
    labels = target["labels"]
    if not labels:
        return negative
    counts = Counter(labels)
    return int(min(counts, key=lambda c: (-counts[c], c)))


def _split(root: Path, targets: dict[str, dict[str, Any]], classes: list[str], seed: int,
           group_by: str | None, val_fraction: float
           ) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]], dict[str, str], str]:
    negative = len(classes)
    if group_by:
        # One stratum: a grouped split weighs whole groups; classes are checked after.
        items = [(rel, 0) for rel in sorted(targets)]
        train_ids, val_ids, groups, note = split_items(
            items, seed=seed, group_by=group_by, val_fraction=val_fraction,
            group_key=lambda rel: Path(rel).name)
    else:
        items = [(rel, _dominant(targets[rel], negative)) for rel in sorted(targets)]
        train_ids, val_ids, groups, note = split_items(items, seed=seed,
                                                       val_fraction=val_fraction)
        note += " by each image's most frequent class (images without boxes spread alike)"
    train = [rel for rel, _ in train_ids]
    val = [rel for rel, _ in val_ids]
    if not any(targets[rel]["boxes"] for rel in val):
        movable = [rel for rel in train if targets[rel]["boxes"]]
        if group_by or len(movable) < 2:
            raise DataError(f"{root}: the split leaves no image with boxes in validation "
                            f"({len(val)} validation image(s), all negatives); "
                            + ("change --group-by or --seed, or " if group_by else "")
                            + "add images with boxes")
        moved = random.Random(seed).choice(movable)
        train.remove(moved)
        val.append(moved)
        note += f"; {moved} moved to validation so it has an image with boxes"
    in_train = {y for rel in train for y in targets[rel]["labels"]}
    untrained = [c for i, c in enumerate(classes) if i not in in_train]
    if untrained:
        raise DataError(f"{root}: every box of class(es) {', '.join(map(repr, untrained))} is "
                        "in validation, none left for training; "
                        + ("change --group-by or --seed" if group_by else "add images of them"))
    return ([(rel, targets[rel]) for rel in train], [(rel, targets[rel]) for rel in val],
            groups, note)


def _imbalance(per_class: dict[str, tuple[int, int]]) -> list[str]:
    counts = {c: n for c, (n, _) in per_class.items() if n}
    if len(counts) < 2:
        return []
    big, small = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
    if counts[big] <= IMBALANCE_RATIO * counts[small]:
        return []
    return [f"classes are imbalanced: {big!r} has {counts[big]} boxes, {small!r} "
            f"{counts[small]} (more than {IMBALANCE_RATIO:g}x); the rare class will be found "
            "less reliably"]
