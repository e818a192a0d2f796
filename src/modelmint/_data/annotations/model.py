"""The in-memory form of an annotated image folder, shared by every annotation format: labelled
boxes in pixels (x1, y1, x2, y2) of each image, plus what was wrong in the files read."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..images import IMAGE_SUFFIXES

# EXIF orientations that swap width and height (the picture is turned a quarter).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


@dataclass
class Box:
    """One labelled box in pixels; x1 < x2 and y1 < y2 when it is sane."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class AnnotatedImage:
    """An image (``file``: relative to the set's root) with its size as annotated."""

    file: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


@dataclass
class AnnotatedSet:
    """A folder of annotated images as read: ``findings`` name each problem met while reading
    (the file, its line or field, what was expected)."""

    root: Path
    format: str
    classes: list[str]
    images: list[AnnotatedImage]
    findings: list[str] = field(default_factory=list)


def is_image(path: Path) -> bool:
    return (path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
            and path.is_file())


def image_files(folder: Path) -> list[Path]:
    """The visible image files below ``folder``, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as it is displayed (EXIF orientation applied), from its
    header alone. Raises OSError (or a subclass) when the header is not an image's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # size only: no pixels are decoded here
        with Image.open(path) as img:
            width, height = img.size
            try:
                turn = img.getexif().get(_EXIF_ORIENTATION, 1)
            except (OSError, ValueError, SyntaxError):
                turn = 1
    return (height, width) if turn in _QUARTER_TURNS else (width, height)


def number(value: float) -> str:
    """A coordinate as text: whole numbers without a decimal point, others to 1/1000 px."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def box_geometry_findings(image: AnnotatedImage) -> list[str]:
    """Boxes that are inverted, empty or reach outside the image's stated size."""
    out = []
    for i, box in enumerate(image.boxes, 1):
        coords = f"({number(box.x1)}, {number(box.y1)}, {number(box.x2)}, {number(box.y2)})"
        if box.x2 <= box.x1 or box.y2 <= box.y1:
            out.append(f"{image.file}: box {i} ({box.label}) {coords} is inverted or empty; "
                       "expected x1 < x2 and y1 < y2")
        elif (box.x1 < 0 or box.y1 < 0 or box.x2 > image.width or box.y2 > image.height):
            out.append(f"{image.file}: box {i} ({box.label}) {coords} reaches outside the "
                       f"{image.width}x{image.height} image")
    return out
