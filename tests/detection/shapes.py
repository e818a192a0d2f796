"""Generated object-detection data: coloured shapes (the classes) on textured backgrounds,
several per image and some small, written as Pascal VOC (``images/`` + ``annotations/``).

Small and fast to make, so the suite trains detectors in seconds; also used by
``benchmarks/detection_quality.py`` as the multi-object set.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A noisy two-colour gradient with stripes: texture the detector must learn to ignore."""
    base = rng.integers(40, 215, size=(2, 3)).astype(np.float32)
    t = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    img = base[0] * (1 - t) + base[1] * t
    img = np.broadcast_to(img, (height, width, 3)).copy()
    period = int(rng.integers(6, 20))
    stripes = (np.arange(height)[:, None] // period) % 2
    img += stripes[..., None] * rng.uniform(-25, 25)
    img += rng.normal(0, 12, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
          colour: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in boxes)


def voc_xml(filename: str, width: int, height: int,
            objects: list[tuple[str, tuple[float, float, float, float]]]) -> str:
    parts = [f"<annotation><filename>{escape(filename)}</filename><size><width>{width}"
             f"</width><height>{height}</height><depth>3</depth></size>"]
    for name, (x1, y1, x2, y2) in objects:
        parts.append(f"<object><name>{escape(name)}</name><bndbox><xmin>{x1:g}</xmin>"
                     f"<ymin>{y1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox>"
                     "</object>")
    parts.append("</annotation>")
    return "".join(parts)


def make_shapes(root: Path, images: int = 60, seed: int = 0, classes: tuple[str, ...] = CLASSES,
                min_side: int = 12, max_side: int = 90, max_objects: int = 4,
                size_range: tuple[int, int] = (200, 360)) -> Path:
    """Write ``images`` JPEGs with 1..``max_objects`` non-overlapping shapes each (sides
    ``min_side``..``max_side`` pixels) and their VOC annotations under ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        img = _background(rng, width, height)
        draw = ImageDraw.Draw(img)
        placed: list[tuple[int, int, int, int]] = []
        objects: list[tuple[str, tuple[float, float, float, float]]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                side = int(rng.integers(min_side, min(max_side, width, height) + 1))
                x1 = int(rng.integers(0, width - side + 1))
                y1 = int(rng.integers(0, height - side + 1))
                box = (x1, y1, x1 + side, y1 + side)
                if not _overlaps(box, placed):
                    break
            else:
                continue
            shape = classes[int(rng.integers(len(classes)))]
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            _draw(draw, shape, box, colour)  # type: ignore[arg-type]
            placed.append(box)
            objects.append((shape, tuple(float(v) for v in box)))  # type: ignore[misc]
        name = f"shapes-{i:04d}.jpg"
        img.save(root / "images" / name, quality=92)
        (root / "annotations" / f"shapes-{i:04d}.xml").write_text(
            voc_xml(name, width, height, objects))
    return root
