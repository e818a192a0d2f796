"""The image preprocessing spec: one implementation for training, the server and any SDK.

It uses Pillow and NumPy only, so a serving process never imports torch. The validation
transform of training *is* :func:`preprocess`, which is what makes the served model see exactly
the tensors it was evaluated on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageSpec:
    """How encoded images become the model's FP32 ``[3, crop, crop]`` input."""

    resize: int = 256  # shorter side, before the centre crop
    crop: int = 224
    interpolation: str = "bilinear"  # antialiased when downscaling (Pillow always is)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Decompression-bomb guard: images above this many pixels are refused before decoding.
    max_pixels: int = 64_000_000
    kind: str = field(default="image")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def open_image(source: bytes | str | Path, spec: ImageSpec | None = None,
               name: str | None = None) -> Image.Image:
    """Decode an image to 8-bit RGB, refusing anything that is not a sane picture.

    EXIF orientation is applied; palette, RGBA (composited on white), CMYK, grayscale and 16-bit
    images are converted; animated images use their first frame.
    """
    spec = spec or ImageSpec()
    label = name or (str(source) if isinstance(source, (str, Path)) else "request image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # we enforce our own pixel limit below
            fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
            img: Image.Image = Image.open(fp)
            width, height = img.size
            if width * height > spec.max_pixels:
                raise ImageDecodeError(
                    f"{label}: {width}x{height} pixels exceeds the limit of {spec.max_pixels} "
                    "(decompression-bomb guard)")
            img.seek(0)  # animated GIF/WebP/APNG: first frame
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb8(img)
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            EOFError) as exc:
        raise ImageDecodeError(f"{label}: not a decodable image ({exc})") from exc


def _to_rgb8(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grayscale: scale to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        img = Image.fromarray(((arr - arr.min()) / span * 255.0).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_and_crop(img: Image.Image, spec: ImageSpec) -> Image.Image:
    """Resize the shorter side to ``spec.resize`` then centre-crop ``spec.crop`` (torchvision's
    ``Resize`` + ``CenterCrop`` rounding)."""
    width, height = img.size
    short, long_ = (width, height) if width <= height else (height, width)
    new_long = int(spec.resize * long_ / short)
    size = (spec.resize, new_long) if width <= height else (new_long, spec.resize)
    img = img.resize(size, _RESAMPLE[spec.interpolation])
    width, height = img.size
    top = round((height - spec.crop) / 2.0)
    left = round((width - spec.crop) / 2.0)
    return img.crop((left, top, left + spec.crop, top + spec.crop))


def to_tensor(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """8-bit RGB image → normalised FP32 CHW array."""
    pixels = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    normalised: np.ndarray = (pixels - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def preprocess(source: bytes | str | Path | Image.Image, spec: ImageSpec | None = None,
               name: str | None = None) -> np.ndarray:
    """Encoded image (bytes or path) or decoded RGB image → FP32 ``[3, crop, crop]``."""
    spec = spec or ImageSpec()
    img = source if isinstance(source, Image.Image) else open_image(source, spec, name)
    return to_tensor(resize_and_crop(img, spec), spec)


def preprocess_batch(sources: list[bytes], spec: ImageSpec, name: str = "image") -> np.ndarray:
    """A list of encoded images → FP32 ``[N, 3, crop, crop]``; errors name the element index."""
    out = np.empty((len(sources), 3, spec.crop, spec.crop), np.float32)
    for i, blob in enumerate(sources):
        out[i] = preprocess(blob, spec, name=f"{name}[{i}]")
    return out
