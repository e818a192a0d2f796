"""COCO: one ``instances*.json`` (at the root or in ``annotations/``) describing a folder of
images; boxes are ``[x, y, width, height]`` in pixels. Several ``instances*.json`` files (one
per split) are read as one set, their categories merged by name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .model import AnnotatedImage, AnnotatedSet, Box, image_files

ANNOTATION_FILE = "annotations/instances_default.json"


def coco_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [*root.glob("instances*.json"), *(root / "annotations").glob("instances*.json")]
    return sorted(p for p in found if p.is_file())


def coco_bbox(box: Box) -> list[float]:
    return [box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1]


def box_from_coco(label: str, bbox: list[float]) -> Box:
    x, y, w, h = bbox
    return Box(label, x, y, x + w, y + h)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _image_dirs(root: Path) -> list[Path]:
    """Where ``file_name`` may be relative to: the root, ``images/``, then every other folder
    (COCO's own ``train2017/`` and the like)."""
    others = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                    and p.name not in ("images", "annotations"))
    return [root, root / "images", *others]


def _list_field(data: dict[str, Any], key: str, where: str, findings: list[str]) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        findings.append(f"{where}: field {key!r} is {type(value).__name__}; expected a list")
        return []
    return value


def read_coco(root: Path) -> AnnotatedSet:
    findings: list[str] = []
    classes: list[str] = []
    images: dict[str, AnnotatedImage] = {}
    dirs = _image_dirs(root)
    for path in coco_files(root):
        _read_one(root, path, dirs, classes, images, findings)
    known = {(root / im.file).resolve() for im in images.values()}
    for folder in dirs[1:]:
        for file in image_files(folder):
            if file.resolve() not in known:
                findings.append(f"{file.relative_to(root).as_posix()}: image that no "
                                "instances*.json lists; ignored")
    return AnnotatedSet(root, "coco", classes, sorted(images.values(), key=lambda im: im.file),
                        findings)


def _read_one(root: Path, path: Path, dirs: list[Path], classes: list[str],
              images: dict[str, AnnotatedImage], findings: list[str]) -> None:
    where = path.relative_to(root).as_posix()
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        findings.append(f"{where}: line {exc.lineno}, column {exc.colno}: malformed JSON "
                        f"({exc.msg}); skipped")
        return
    except (OSError, UnicodeDecodeError) as exc:
        findings.append(f"{where}: unreadable ({exc}); skipped")
        return
    if not isinstance(data, dict):
        findings.append(f"{where}: top level is {type(data).__name__}; expected an object with "
                        "images, annotations and categories")
        return
    names: dict[Any, str] = {}
    for i, cat in enumerate(_list_field(data, "categories", where, findings)):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            findings.append(f"{where}: categories[{i}]: expected an object with an id and a "
                            "name; skipped")
            continue
        names[cat["id"]] = cat["name"]
    for cat_id in sorted(names, key=lambda c: (str(type(c)), c)):
        if names[cat_id] not in classes:
            classes.append(names[cat_id])
    by_id: dict[Any, AnnotatedImage] = {}
    for i, img in enumerate(_list_field(data, "images", where, findings)):
        field_of = f"{where}: images[{i}]"
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str):
            findings.append(f"{field_of}.file_name: missing or not text; skipped")
            continue
        width, height = img.get("width"), img.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            findings.append(f"{field_of}: width/height are {width!r}/{height!r}; expected "
                            "positive integers; skipped")
            continue
        file = next((d / img["file_name"] for d in dirs if (d / img["file_name"]).is_file()),
                    None)
        if file is None:
            findings.append(f"{field_of}: annotation without an image ({img['file_name']!r} "
                            "not found); skipped")
            continue
        rel = file.relative_to(root).as_posix()
        image = images.setdefault(rel, AnnotatedImage(rel, width, height, []))
        by_id[img.get("id")] = image
    for i, ann in enumerate(_list_field(data, "annotations", where, findings)):
        field_of = f"{where}: annotations[{i}]"
        if not isinstance(ann, dict):
            findings.append(f"{field_of}: expected an object; skipped")
            continue
        owner = by_id.get(ann.get("image_id"))
        if owner is None:
            findings.append(f"{field_of}.image_id: {ann.get('image_id')!r} is not an image "
                            "id of this file (or its image was skipped); skipped")
            continue
        if ann.get("category_id") not in names:
            known = ", ".join(str(c) for c in names) or "none"
            findings.append(f"{field_of}.category_id: {ann.get('category_id')!r} is not a "
                            f"category id (known: {known}); skipped")
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            findings.append(f"{field_of}.bbox: {bbox!r}; expected [x, y, width, height], "
                            "4 numbers; skipped")
            continue
        if ann.get("iscrowd"):
            findings.append(f"{field_of}: a crowd region (iscrowd 1), not one object; skipped")
            continue
        owner.boxes.append(box_from_coco(names[ann["category_id"]], bbox))


def write_coco(aset: AnnotatedSet, dst: Path, files: dict[str, str]) -> None:
    categories = [{"id": i, "name": name, "supercategory": ""}
                  for i, name in enumerate(aset.classes, 1)]
    ids = {c["name"]: c["id"] for c in categories}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(aset.images, 1):
        target = Path(files[image.file]).relative_to("images").as_posix()
        images.append({"id": image_id, "file_name": target, "width": image.width,
                       "height": image.height})
        for box in image.boxes:
            x, y, w, h = coco_bbox(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": ids[box.label], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0, "segmentation": []})
    out = dst / ANNOTATION_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": categories}), encoding="utf-8")
