"""YOLO (Darknet / Ultralytics): ``images/`` + ``labels/`` with one ``.txt`` per image, a line
``class x_centre y_centre width height`` per box, normalised to the image size (0..1); class
names in ``data.yaml`` (``names`` as a list or an index -> name mapping) or ``classes.txt``.
``images/train`` + ``labels/train`` sub-splits are read as one set. A line of more than five
numbers is a segment polygon: its bounding box is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .model import AnnotatedImage, AnnotatedSet, Box, image_files, upright_size

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
CLASS_FILES = ("classes.txt", "labels/classes.txt", "obj.names")
DECIMALS = 8  # normalised: 1e-8 of a 100 000-pixel side is 0.001 px


def yolo_class_source(root: Path) -> Path | None:
    for name in (*YAML_NAMES, *CLASS_FILES):
        if (root / name).is_file():
            return root / name
    return None


def is_yolo(root: Path) -> bool:
    labels = root / "labels"
    return ((root / "images").is_dir() and labels.is_dir() and any(labels.rglob("*.txt"))
            and yolo_class_source(root) is not None)


def yolo_line(box: Box, class_index: int, width: int, height: int) -> str:
    cx, cy = (box.x1 + box.x2) / 2 / width, (box.y1 + box.y2) / 2 / height
    w, h = (box.x2 - box.x1) / width, (box.y2 - box.y1) / height
    return f"{class_index} " + " ".join(f"{v:.{DECIMALS}f}" for v in (cx, cy, w, h))


def parse_yolo_line(text: str, classes: list[str], width: int,
                    height: int) -> Box | None:
    """The box of one label line (None for a blank line). Raises ValueError saying what the
    line should hold."""
    parts = text.split()
    if not parts:
        return None
    if len(parts) != 5 and (len(parts) < 7 or len(parts) % 2 == 0):
        raise ValueError(f"{len(parts)} value(s); expected 5: class x_centre y_centre width "
                         "height (or a class and a polygon of x y pairs)")
    try:
        index = int(parts[0])
    except ValueError:
        raise ValueError(f"class {parts[0]!r} is not a whole number") from None
    if not 0 <= index < len(classes):
        raise ValueError(f"class {index} is not in the class list (0..{len(classes) - 1})")
    try:
        values = [float(v) for v in parts[1:]]
    except ValueError:
        raise ValueError(f"{parts[1:]} are not all numbers") from None
    if len(values) == 4:
        cx, cy, w, h = values
        x1, x2 = (cx - w / 2) * width, (cx + w / 2) * width
        y1, y2 = (cy - h / 2) * height, (cy + h / 2) * height
    else:
        xs, ys = values[0::2], values[1::2]
        x1, x2 = min(xs) * width, max(xs) * width
        y1, y2 = min(ys) * height, max(ys) * height
    # Normalised floats turn 426 into 426.00000001: to 1/10 000 px, a whole pixel stays whole.
    return Box(classes[index], *(round(v, 4) for v in (x1, y1, x2, y2)))


def _names_from_yaml(data: Any) -> list[str]:
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list) and all(isinstance(n, (str, int)) for n in names):
        return [str(n) for n in names]
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        keys = sorted(names)
        if keys == list(range(len(keys))):
            return [str(names[k]) for k in keys]
    raise ValueError("field 'names': expected a list of class names or a mapping "
                     "0: name, 1: name, ... with no index missing")


def read_classes(root: Path, findings: list[str]) -> list[str]:
    source = yolo_class_source(root)
    if source is None:
        findings.append("data.yaml / classes.txt: not found; expected the class names")
        return []
    where = source.relative_to(root).as_posix()
    try:
        text = source.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        findings.append(f"{where}: unreadable ({exc})")
        return []
    if source.suffix not in (".yaml", ".yml"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        return _names_from_yaml(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        findings.append(f"{where}: {line}malformed YAML ({getattr(exc, 'problem', exc)})")
    except ValueError as exc:
        findings.append(f"{where}: {exc}")
    return []


def label_path(root: Path, image: Path) -> Path:
    """``images/train/a.jpg`` -> ``labels/train/a.txt``."""
    return (root / "labels" / image.relative_to(root / "images")).with_suffix(".txt")


def read_yolo(root: Path) -> AnnotatedSet:
    findings: list[str] = []
    classes = read_classes(root, findings)
    images: list[AnnotatedImage] = []
    used: set[Path] = set()
    for path in image_files(root / "images"):
        rel = path.relative_to(root).as_posix()
        labels = label_path(root, path)
        used.add(labels)
        try:
            width, height = upright_size(path)
        except OSError:
            findings.append(f"{rel}: not a readable image; skipped")
            continue
        if not labels.is_file():
            findings.append(f"{rel}: image without an annotation file "
                            f"({labels.relative_to(root).as_posix()}); kept as a negative "
                            "(no boxes)")
            images.append(AnnotatedImage(rel, width, height, []))
            continue
        boxes = _read_labels(root, labels, classes, width, height, findings)
        if boxes is not None:
            images.append(AnnotatedImage(rel, width, height, boxes))
    for labels in sorted((root / "labels").rglob("*.txt")):
        if labels not in used and labels.name != "classes.txt":
            findings.append(f"{labels.relative_to(root).as_posix()}: annotation without an "
                            "image; skipped")
    return AnnotatedSet(root, "yolo", classes, images, findings)


def _read_labels(root: Path, labels: Path, classes: list[str], width: int, height: int,
                 findings: list[str]) -> list[Box] | None:
    """The boxes of a label file; None when it cannot be read (its image is then left out, not
    taken for a negative)."""
    where = labels.relative_to(root).as_posix()
    try:
        lines = labels.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        findings.append(f"{where}: unreadable ({exc}); skipped with its image")
        return None
    boxes = []
    for number, line in enumerate(lines, 1):
        try:
            box = parse_yolo_line(line, classes, width, height)
        except ValueError as exc:
            findings.append(f"{where}: line {number}: {exc}; line skipped")
            continue
        if box is not None:
            boxes.append(box)
    return boxes


def write_yolo(aset: AnnotatedSet, dst: Path, files: dict[str, str]) -> None:
    index = {name: i for i, name in enumerate(aset.classes)}
    for image in aset.images:
        target = Path(files[image.file])
        out = (dst / "labels" / target.relative_to("images")).with_suffix(".txt")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(yolo_line(b, index[b.label], image.width, image.height) + "\n"
                               for b in image.boxes), encoding="utf-8")
    meta = {"path": ".", "train": "images", "val": "images", "nc": len(aset.classes),
            "names": dict(enumerate(aset.classes))}
    (dst / "data.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True),
                                   encoding="utf-8")
