"""Annotated image folders for object detection: read, detect and write Pascal VOC, COCO and
YOLO, and convert between them exactly (to well under half a pixel).

Libraries: XML is parsed with ``defusedxml`` (uploads are untrusted: no entity expansion, no
external entities), YAML with PyYAML's ``safe_load``, JSON with the standard library. No
converter library is used: the three formats are small, and the readers must name the file and
the line or field of every bad annotation (and go on past it), which converters do not do.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ...errors import DataError
from .coco import read_coco, write_coco
from .detect import EXPECTED_LAYOUTS, FORMATS, detect_format, holds_format
from .model import AnnotatedImage, AnnotatedSet, Box, box_geometry_findings
from .voc import read_voc, voc_xml, write_voc
from .yolo import read_yolo, write_yolo

__all__ = [
    "FORMATS",
    "AnnotatedImage",
    "AnnotatedSet",
    "Box",
    "detect_format",
    "read_annotations",
    "read_layout",
    "voc_xml",
    "write_annotations",
]

_READERS = {"voc": read_voc, "coco": read_coco, "yolo": read_yolo}
_WRITERS = {"voc": write_voc, "coco": write_coco, "yolo": write_yolo}


def _check_format(fmt: str, what: str) -> str:
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise DataError(f"{what} {fmt!r}: unknown annotation format; expected one of "
                        f"{', '.join(FORMATS)}")
    return fmt


def read_layout(root: Path, fmt: str | None = None) -> AnnotatedSet:
    """The set as its files say, with the problems of the files themselves in ``findings``
    (malformed files, unknown classes, missing images) but no check of the boxes' geometry."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected an annotated image folder "
                        f"({EXPECTED_LAYOUTS})")
    if fmt is None:
        fmt = detect_format(root)
        if fmt is None:
            raise DataError(f"{root}: no object-detection annotations found; expected "
                            f"{EXPECTED_LAYOUTS}")
    fmt = _check_format(fmt, "--from")
    if not holds_format(root, fmt):
        raise DataError(f"{root}: not a {fmt.upper()} layout; expected {EXPECTED_LAYOUTS}")
    return _READERS[fmt](root)


def read_annotations(root: Path, fmt: str | None = None) -> AnnotatedSet:
    """Read the annotated folder at ``root`` (its format detected when ``fmt`` is None). A bad
    annotation file or line is named in ``findings`` and skipped; a box that is inverted or
    reaches outside its image's stated size is named there too, and kept as written (the data
    check repairs or drops it). Only a folder with no known layout raises DataError."""
    aset = read_layout(root, fmt)
    for image in aset.images:
        aset.findings.extend(box_geometry_findings(image))
    return aset


def _place(src: Path, dst: Path) -> None:
    """Copy an image, as a hard link when the file system allows (same bytes, no space)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _target_files(aset: AnnotatedSet) -> dict[str, str]:
    """Each image's path in the written set: ``images/`` + its path below its image folder
    (``JPEGImages/a.jpg`` -> ``images/a.jpg``, ``images/train/a.jpg`` stays)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for image in aset.images:
        parts = Path(image.file).parts
        below = Path(*parts[1:]) if len(parts) > 1 else Path(parts[0])
        target = Path("images") / below
        n = 1
        while target.as_posix() in taken:  # two source folders with the same file name
            target = target.with_stem(f"{below.stem}-{n}")
            n += 1
        taken.add(target.as_posix())
        out[image.file] = target.as_posix()
    return out


def write_annotations(aset: AnnotatedSet, dst: Path, fmt: str, *,
                      copy_images: bool = True) -> Path:
    """Write ``aset`` at ``dst`` (a new or empty folder) in ``fmt``: VOC ``images/`` +
    ``annotations/``, COCO ``images/`` + ``annotations/instances_default.json``, YOLO
    ``images/`` + ``labels/`` + ``data.yaml``. Returns ``dst``."""
    fmt = _check_format(fmt, "--to")
    dst = Path(dst).expanduser().resolve()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst}: already exists and is not an empty folder; expected a new "
                        "destination")
    if dst.is_relative_to(Path(aset.root).resolve()):
        raise DataError(f"{dst}: inside the source folder {aset.root}; expected a destination "
                        "outside it")
    labels = [b.label for im in aset.images for b in im.boxes]
    classes = aset.classes + sorted(set(labels) - set(aset.classes))
    complete = AnnotatedSet(aset.root, aset.format, classes, aset.images, aset.findings)
    files = _target_files(complete)
    dst.mkdir(parents=True, exist_ok=True)
    if copy_images:
        for image in complete.images:
            _place(Path(aset.root) / image.file, dst / files[image.file])
    _WRITERS[fmt](complete, dst, files)
    return dst
