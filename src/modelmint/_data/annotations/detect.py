"""Which annotation format a folder holds, from its layout alone (no file is parsed)."""

from __future__ import annotations

from pathlib import Path

from .coco import coco_files
from .voc import voc_dirs
from .yolo import is_yolo

FORMATS = ("voc", "coco", "yolo")

EXPECTED_LAYOUTS = (
    "VOC: images/ + annotations/*.xml, or JPEGImages/ + Annotations/*.xml (also one folder "
    "down, e.g. VOC2012/); COCO: a folder of images + instances*.json (or "
    "annotations/instances_*.json); YOLO: images/ + labels/*.txt + data.yaml or classes.txt "
    "(images/train + labels/train sub-splits too)")


def detect_format(root: Path) -> str | None:
    """"voc", "coco" or "yolo" for the layout ``root`` holds, else None."""
    root = Path(root)
    if not root.is_dir():
        return None
    if voc_dirs(root) is not None:
        return "voc"
    if coco_files(root):
        return "coco"
    if is_yolo(root):
        return "yolo"
    return None


def holds_format(root: Path, fmt: str) -> bool:
    """Whether ``root`` holds the layout of ``fmt`` (a format asked for still needs its files)."""
    checks = {"voc": lambda: voc_dirs(root) is not None, "coco": lambda: bool(coco_files(root)),
              "yolo": lambda: is_yolo(root)}
    return checks[fmt]()
