"""A detection project's data: its images and their boxes, kept as a Pascal VOC folder.

``projects/<id>/voc/`` holds ``images/<item id><suffix>``, ``annotations/<item id>.xml`` (one per
*labelled* image; an XML without objects is a labelled negative, no XML means not labelled yet)
and ``classes.txt`` (the project's classes in the order the labelling page numbers them). A
training snapshot hard-links the labelled images and their XML, so `mint train` finds the VOC
layout it trains a detector on, and relabelling meanwhile cannot change what it trains on.
Boxes are in pixels of the upright image (EXIF orientation applied), as the browser shows it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import DataError, InvalidInput
from .db import Item, Project
from .settings import AppSettings
from .uploads import SUFFIXES, UNLABELED, UploadResult, check_label, store_item, validate_zip

if TYPE_CHECKING:
    from .._data.annotations import AnnotatedSet, Box

DETECTION = "detection"
CLASSES_FILE = "classes.txt"
IMAGE_SUFFIXES = SUFFIXES["image"]
EXPORT_FORMATS = ("coco", "voc", "yolo")
_classes_lock = threading.Lock()  # classes.txt is read-modify-written by uploads and the API


def voc_root(settings: AppSettings, project_id: int) -> Path:
    return settings.projects_dir / str(project_id) / "voc"


def images_dir(settings: AppSettings, project_id: int) -> Path:
    path = voc_root(settings, project_id) / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def annotation_file(settings: AppSettings, item: Item) -> Path:
    return voc_root(settings, item.project_id) / "annotations" / f"{item.id}.xml"


# --- classes -----------------------------------------------------------------------------------

def read_classes(settings: AppSettings, project_id: int) -> list[str]:
    path = voc_root(settings, project_id) / CLASSES_FILE
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]


def add_classes(settings: AppSettings, project_id: int, names: list[str]) -> list[str]:
    """Append the classes not known yet (order kept: it is the number-key order)."""
    with _classes_lock:
        classes = read_classes(settings, project_id)
        new = [n for n in dict.fromkeys(names) if n not in classes]
        if new:
            classes += new
            _write_atomic(voc_root(settings, project_id) / CLASSES_FILE,
                          "".join(f"{c}\n" for c in classes))
        return classes


# --- one image's boxes ----------------------------------------------------------------------

def upright_size_or_none(path: Path) -> tuple[int, int] | None:
    """(width, height) of the upright image from its header; None when it is no image."""
    from PIL import Image

    from .._data.annotations.model import upright_size

    try:
        return upright_size(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def image_size(settings: AppSettings, item: Item) -> tuple[int, int]:
    """(width, height) of the upright image, from its header."""
    size = upright_size_or_none(images_dir(settings, item.project_id) / item.stored_name)
    if size is None:
        raise DataError(f"item {item.id} ({item.original}): its file is not a readable image")
    return size


def read_boxes(settings: AppSettings, item: Item) -> list[Box] | None:
    """The image's boxes, or None when it is not labelled yet."""
    from .._data.annotations.voc import parse_voc_xml

    path = annotation_file(settings, item)
    if not path.is_file():
        return None
    return parse_voc_xml(path.read_bytes(), path.name)[3]


def write_boxes(settings: AppSettings, item: Item, width: int, height: int,
                boxes: list[Box]) -> None:
    """Write the image's VOC annotation (replacing it atomically: a snapshot keeps the old)."""
    from .._data.annotations import AnnotatedImage, voc_xml

    image = AnnotatedImage(f"images/{item.stored_name}", width, height, list(boxes))
    path = annotation_file(settings, item)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, voc_xml(image))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def clip_boxes(boxes: list[Box], width: int, height: int, where: str,
               findings: list[str]) -> list[Box]:
    """Boxes cut to the image; those left empty are dropped (each change is a finding)."""
    kept = []
    for n, box in enumerate(boxes, 1):
        cut = replace(box, x1=min(max(box.x1, 0.0), width), y1=min(max(box.y1, 0.0), height),
                      x2=min(max(box.x2, 0.0), width), y2=min(max(box.y2, 0.0), height))
        if cut.x2 <= cut.x1 or cut.y2 <= cut.y1:
            findings.append(f"{where}: box {n} ({box.label}) is empty inside the "
                            f"{width}x{height} image; dropped")
            continue
        if cut != box:
            findings.append(f"{where}: box {n} ({box.label}) reached outside the "
                            f"{width}x{height} image; cut to it")
        kept.append(cut)
    return kept


# --- uploads ---------------------------------------------------------------------------------

def ingest_detection_zip(session: Session, project: Project, archive: Path, name: str,
                         settings: AppSettings, written: list[Path]) -> UploadResult:
    """A VOC, COCO or YOLO set (its boxes and classes come along), or plain images (added
    unlabelled). The archive is validated as a whole first (as every upload), then unpacked
    into a scratch folder the annotation readers read."""
    from .._data.annotations import detect_format, read_annotations

    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"upload {name!r}: not a valid zip file ({exc})") from None
    with zf, tempfile.TemporaryDirectory(dir=archive.parent) as scratch:
        root = Path(scratch)
        for info in validate_zip(zf, name, archive.stat().st_size, settings):
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            dest = root.joinpath(*parts)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                # A CRC error or truncated data; or a name no folder can hold (too long, a
                # NUL, a file where another entry needs a folder).
                raise InvalidInput(f"upload {name!r}: entry {info.filename!r} cannot be "
                                   f"unpacked ({exc})") from None
        base = _set_root(root, detect_format)
        fmt = detect_format(base)
        if fmt is None:
            return _plain_images(session, project, base, settings, written)
        aset = read_annotations(base, fmt)
        return _annotated(session, project, aset, name, settings, written)


def _set_root(root: Path, detect: Any) -> Path:
    """A zipped folder (``shapes/images/...``) is read from inside its one top folder."""
    while detect(root) is None:
        children = [p for p in root.iterdir()]
        if len(children) != 1 or not children[0].is_dir():
            break
        root = children[0]
    return root


def _plain_images(session: Session, project: Project, root: Path, settings: AppSettings,
                  written: list[Path]) -> UploadResult:
    result = UploadResult(format=None)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        original = path.relative_to(root).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            result.skipped.append(original)
            continue
        if upright_size_or_none(path) is None:
            result.skipped.append(original)
            result.findings.append(f"{original}: not a readable image; skipped")
            continue
        _store_image(session, project, path, original, settings, written)
        result.added += 1
    if result.added:
        result.labels[UNLABELED] = result.added
        result.findings.append("no VOC, COCO or YOLO annotations found: the images were added "
                               "unlabelled")
    return result


def _annotated(session: Session, project: Project, aset: AnnotatedSet, name: str,
               settings: AppSettings, written: list[Path]) -> UploadResult:
    result = UploadResult(format=aset.format, findings=list(aset.findings))
    classes = [check_label(c, f"upload {name!r}: class") for c in aset.classes]
    for image in aset.images:
        path = aset.root / image.file
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            result.skipped.append(image.file)
            continue
        size = upright_size_or_none(path)
        if size is None:
            result.skipped.append(image.file)
            result.findings.append(f"{image.file}: not a readable image; skipped")
            continue
        if size != (image.width, image.height):  # the picture decides, not what the file says
            result.findings.append(f"{image.file}: the annotation gives a {image.width}x"
                                   f"{image.height} image; it is {size[0]}x{size[1]}")
        for box in image.boxes:
            if box.label not in classes:
                classes.append(check_label(box.label, f"upload {name!r}: {image.file}"))
        item = _store_image(session, project, path, image.file, settings, written)
        boxes = clip_boxes(image.boxes, *size, image.file, result.findings)
        written.append(annotation_file(settings, item))
        write_boxes(settings, item, *size, boxes)
        item.boxes = len(boxes)
        result.added += 1
        for box in boxes:
            result.labels[box.label] = result.labels.get(box.label, 0) + 1
    add_classes(settings, project.id, classes)
    return result


def _store_image(session: Session, project: Project, path: Path, original: str,
                 settings: AppSettings, written: list[Path]) -> Item:
    item, dest = store_item(session, project, original, path.suffix.lower(), None, None,
                            path.stat().st_size, written, images_dir(settings, project.id))
    shutil.copyfile(path, dest)
    return item


def ingest_detection_file(session: Session, project: Project, path: Path, name: str,
                          settings: AppSettings, written: list[Path]) -> UploadResult:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InvalidInput(f"upload {name!r}: a detection project takes .zip or "
                           f"{', '.join(sorted(IMAGE_SUFFIXES))} files")
    if upright_size_or_none(path) is None:
        raise InvalidInput(f"upload {name!r}: not a readable image")
    _, dest = store_item(session, project, PurePosixPath(name).name, suffix, None, None,
                         path.stat().st_size, written, images_dir(settings, project.id))
    path.rename(dest)
    return UploadResult(added=1, labels={UNLABELED: 1})


# --- counts, snapshot, check, export ----------------------------------------------------------

def detection_counts(session: Session, project_id: int) -> dict[str, int]:
    rows = session.execute(select(Item.boxes.is_(None), func.count())
                           .where(Item.project_id == project_id)
                           .group_by(Item.boxes.is_(None))).all()
    return {(UNLABELED if unlabelled else "labelled"): n for unlabelled, n in rows}


def build_detection_snapshot(session: Session, settings: AppSettings, project: Project,
                             dest: Path) -> dict[str, int]:
    """Hard-link the labelled images and their annotations into ``dest`` (VOC layout)."""
    items = session.scalars(select(Item).where(Item.project_id == project.id,
                                               Item.boxes.is_not(None))).all()
    if not any(i.boxes for i in items):
        raise DataError(f"project {project.name!r}: training needs labelled images with at "
                        "least one box; draw some on the Label page or upload annotations")
    source = voc_root(settings, project.id)
    for folder in ("images", "annotations"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    for item in items:
        _link(source / "images" / item.stored_name, dest / "images" / item.stored_name)
        _link(annotation_file(settings, item), dest / "annotations" / f"{item.id}.xml")
    shutil.copyfile(source / CLASSES_FILE, dest / CLASSES_FILE)
    return {"images": len(items), "boxes": sum(i.boxes or 0 for i in items)}


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: copy instead
        shutil.copyfile(src, dst)


def detection_check(session: Session, settings: AppSettings, project: Project,
                    work: Path) -> dict[str, Any]:
    """Boxes per class on the labelled images, and what the VOC reader finds wrong."""
    from .._data.annotations import read_annotations

    build_detection_snapshot(session, settings, project, work)
    aset = read_annotations(work, "voc")
    per_class = {c: 0 for c in aset.classes}
    for image in aset.images:
        for box in image.boxes:
            per_class[box.label] = per_class.get(box.label, 0) + 1
    counts = detection_counts(session, project.id)
    warnings = list(aset.findings)
    warnings += [f"class {c!r} has no boxes yet" for c, n in per_class.items() if n == 0]
    if counts.get(UNLABELED):
        warnings.append(f"{counts[UNLABELED]} image(s) are not labelled yet; training leaves "
                        "them out")
    return {"counts": {"boxes": per_class}, "issues": [], "warnings": warnings,
            "split": f"{len(aset.images)} labelled images; mint train splits them 80/20"}


def export_zip(session: Session, settings: AppSettings, project: Project, fmt: str,
               dest: Path) -> Path:
    """The labelled images with their boxes in ``fmt`` (COCO, VOC or YOLO), zipped to
    ``dest``."""
    from .._data.annotations import read_annotations, write_annotations

    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        snapshot, out = Path(scratch) / "voc", Path(scratch) / project.slug
        build_detection_snapshot(session, settings, project, snapshot)
        aset = read_annotations(snapshot, "voc")
        written = write_annotations(aset, out, fmt, copy_images=True)
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(Path(written).rglob("*")):
                if path.is_file():
                    zf.write(path, f"{project.slug}/{path.relative_to(written).as_posix()}")
    return dest
