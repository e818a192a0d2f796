"""Pascal VOC: one XML file per image (``annotations/*.xml`` beside ``images/``, or VOC's own
``Annotations/`` beside ``JPEGImages/``). Boxes are ``xmin ymin xmax ymax`` in pixels, read and
written as they stand (no 1-pixel offset is added or removed).

XML comes from uploads, so it is parsed with ``defusedxml`` (no entity expansion, no external
entities)."""

from __future__ import annotations

from glob import escape as glob_escape
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from ..images import IMAGE_SUFFIXES
from .model import AnnotatedImage, AnnotatedSet, Box, image_files, number, upright_size

ANNOTATION_DIRS = ("annotations", "Annotations")
IMAGE_DIRS = ("images", "JPEGImages")
CLASS_LISTS = ("classes.txt", "labels.txt")  # an optional fixed class list beside the folders


def voc_dirs(root: Path) -> tuple[Path, Path, Path] | None:
    """(set root, annotation folder, image folder) of a VOC layout at ``root``, or of VOC's own
    ``Annotations/`` + ``JPEGImages/`` one level below it (``VOC2012/``); None if neither."""
    if not root.is_dir():
        return None
    pairs = zip(ANNOTATION_DIRS, IMAGE_DIRS, strict=True)
    candidates = [(root, ann, img) for ann, img in pairs]
    candidates += [(sub, ANNOTATION_DIRS[1], IMAGE_DIRS[1])
                   for sub in sorted(p for p in root.iterdir() if p.is_dir())]
    for base, ann_name, img_name in candidates:
        ann, img = base / ann_name, base / img_name
        if ann.is_dir() and img.is_dir() and any(ann.rglob("*.xml")):
            return base, ann, img
    return None


def voc_xml(image: AnnotatedImage) -> str:
    """One image's annotation as VOC XML."""
    path = Path(image.file)
    folder = path.parent.name
    parts = ["<annotation>", f"<folder>{escape(folder)}</folder>",
             f"<filename>{escape(path.name)}</filename>",
             f"<size><width>{image.width}</width><height>{image.height}</height>"
             "<depth>3</depth></size>"]
    for box in image.boxes:
        parts.append(f"<object><name>{escape(box.label)}</name><difficult>0</difficult>"
                     f"<bndbox><xmin>{number(box.x1)}</xmin><ymin>{number(box.y1)}</ymin>"
                     f"<xmax>{number(box.x2)}</xmax><ymax>{number(box.y2)}</ymax></bndbox>"
                     "</object>")
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


class VocFieldError(ValueError):
    """A field of an annotation that is missing or not what VOC expects."""


def _text(node: Any, path: str) -> str:
    child = node.find(path)
    if child is None or child.text is None or not child.text.strip():
        raise VocFieldError(f"<{path}> is missing or empty")
    return str(child.text).strip()


def _float(node: Any, path: str, where: str) -> float:
    text = _text(node, path)
    try:
        return float(text)
    except ValueError:
        raise VocFieldError(f"{where}<{path}> is {text!r}; expected a number") from None


def parse_voc_xml(text: str | bytes, name: str) -> tuple[str | None, int, int, list[Box]]:
    """(filename, width, height, boxes) of one VOC annotation; width/height are 0 when the
    file does not say. Raises VocFieldError / ParseError naming what is wrong."""
    root = fromstring(text)
    if root.tag != "annotation":
        raise VocFieldError(f"root element is <{root.tag}>; expected <annotation>")
    filename = root.findtext("filename")
    width = height = 0
    if root.find("size") is not None:
        try:
            width = int(float(root.findtext("size/width") or 0))
            height = int(float(root.findtext("size/height") or 0))
        except ValueError:
            raise VocFieldError("<size> width/height are not numbers") from None
    boxes = []
    for i, obj in enumerate(root.iter("object"), 1):
        where = f"object {i} "
        try:
            label = _text(obj, "name")
        except VocFieldError:
            raise VocFieldError(f"{where}<name> is missing or empty") from None
        if obj.find("bndbox") is None:
            raise VocFieldError(f"{where}({label}) has no <bndbox>")
        boxes.append(Box(label, *(_float(obj, f"bndbox/{k}", where)
                                   for k in ("xmin", "ymin", "xmax", "ymax"))))
    return (filename.strip() if filename else None), width, height, boxes


def _image_for(xml: Path, ann_dir: Path, img_dir: Path, filename: str | None) -> Path | None:
    """The image an annotation describes, looked for beside the XML's relative folder, then
    directly in the image folder: an image with the XML's own stem first (files are renamed
    in pairs, a stale <filename> is common), then the <filename> it names."""
    sub = xml.parent.relative_to(ann_dir)
    for folder in (img_dir / sub, img_dir):
        for candidate in sorted(folder.glob(f"{glob_escape(xml.stem)}.*")):
            if (candidate.stem == xml.stem and candidate.suffix.lower() in IMAGE_SUFFIXES
                    and candidate.is_file()):
                return candidate
    for folder in (img_dir / sub, img_dir):
        if filename and (folder / Path(filename).name).is_file():
            return folder / Path(filename).name
    return None


def read_voc(root: Path) -> AnnotatedSet:
    dirs = voc_dirs(root)
    assert dirs is not None, "read_voc is called on a VOC layout"
    base, ann_dir, img_dir = dirs
    findings: list[str] = []
    images: list[AnnotatedImage] = []
    annotated: set[Path] = set()
    # An image whose annotation is unreadable is left out, not taken for a negative: its
    # objects would be taught as background.
    unreadable: set[Path] = set()
    skipped = "skipped with its image"
    for xml in sorted(ann_dir.rglob("*.xml")):
        rel_xml = xml.relative_to(base).as_posix()
        try:
            filename, width, height, boxes = parse_voc_xml(xml.read_bytes(), rel_xml)
        except ParseError as exc:
            line, column = getattr(exc, "position", (0, 0))
            reason = str(exc).split(": line ", 1)[0]  # the position is given first
            findings.append(f"{rel_xml}: line {line}, column {column}: malformed XML "
                            f"({reason}); {skipped}")
            unreadable.add(xml.relative_to(ann_dir).with_suffix(""))
            continue
        except DefusedXmlException as exc:
            findings.append(f"{rel_xml}: refused XML construct ({type(exc).__name__}); "
                            f"expected a plain VOC annotation; {skipped}")
            unreadable.add(xml.relative_to(ann_dir).with_suffix(""))
            continue
        except (VocFieldError, OSError) as exc:
            findings.append(f"{rel_xml}: {exc}; {skipped}")
            unreadable.add(xml.relative_to(ann_dir).with_suffix(""))
            continue
        image_path = _image_for(xml, ann_dir, img_dir, filename)
        if image_path is None:
            findings.append(f"{rel_xml}: annotation without an image (<filename> "
                            f"{filename!r} not found in {img_dir.relative_to(base)}/); skipped")
            continue
        rel = image_path.relative_to(base).as_posix()
        if image_path in annotated:
            findings.append(f"{rel_xml}: a second annotation of {rel}; skipped (the first "
                            "one read is used)")
            continue
        annotated.add(image_path)
        if width <= 0 or height <= 0:
            try:
                width, height = upright_size(image_path)
            except OSError:
                findings.append(f"{rel}: not a readable image and {rel_xml} gives no <size>; "
                                "skipped")
                continue
        images.append(AnnotatedImage(rel, width, height, boxes))
    for path in image_files(img_dir):
        if path not in annotated and path.relative_to(img_dir).with_suffix("") not in unreadable:
            rel = path.relative_to(base).as_posix()
            try:
                width, height = upright_size(path)
            except OSError:
                findings.append(f"{rel}: image without an annotation file, and not a readable "
                                "image; skipped")
                continue
            findings.append(f"{rel}: image without an annotation file; kept as a negative "
                            "(no boxes)")
            images.append(AnnotatedImage(rel, width, height, []))
    images.sort(key=lambda im: im.file)
    classes = _class_list(base, findings) or sorted({b.label for im in images for b in im.boxes})
    return AnnotatedSet(base, "voc", classes, images, findings)


def _class_list(base: Path, findings: list[str]) -> list[str]:
    """The fixed class list of ``classes.txt``/``labels.txt`` beside the folders, if any."""
    for name in CLASS_LISTS:
        path = base / name
        if path.is_file():
            try:
                names = [line.strip() for line in path.read_text("utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                findings.append(f"{name}: unreadable class list ({exc}); classes taken from "
                                "the annotations")
                return []
            return [n for n in names if n]
    return []


def write_voc(aset: AnnotatedSet, dst: Path, files: dict[str, str]) -> None:
    """``files``: each image's source file -> its path in ``dst`` (below ``images/``). The
    class list is written too (``classes.txt``): it keeps the classes' order, and any class
    without a box, through a conversion."""
    (dst / "classes.txt").write_text("".join(f"{c}\n" for c in aset.classes), encoding="utf-8")
    for image in aset.images:
        target = Path(files[image.file])
        xml = dst / "annotations" / target.relative_to("images").with_suffix(".xml")
        xml.parent.mkdir(parents=True, exist_ok=True)
        out = AnnotatedImage(target.as_posix(), image.width, image.height, image.boxes)
        xml.write_text(voc_xml(out), encoding="utf-8")
