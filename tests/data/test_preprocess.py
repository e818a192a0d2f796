"""The preprocessing spec: every odd image kind becomes the same 8-bit RGB the model expects."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from modelmint._data.preprocess import ImageSpec, open_image, preprocess
from modelmint.errors import ImageDecodeError


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 320, h: int = 240) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def test_matches_torchvision_validation_transform(hymenoptera) -> None:
    # Differential test: our NumPy/Pillow path against torchvision's standard eval transform.
    reference = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for path in sorted((hymenoptera / "val" / "bees").iterdir())[:5]:
        ours = preprocess(path)
        theirs = reference(Image.open(path).convert("RGB")).numpy()
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_exif_orientation_is_applied() -> None:
    img = gradient(320, 240)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (240, 320)


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK", "L", "LA", "1"])
def test_modes_become_rgb(mode: str) -> None:
    img = gradient().convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = open_image(encode(img, fmt))
    assert decoded.mode == "RGB" and decoded.size == (320, 240)


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    assert open_image(encode(img)).getpixel((5, 5)) == (255, 255, 255)


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    arr = np.full((64, 64), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    decoded = open_image(encode(Image.fromarray(arr)))
    assert decoded.getpixel((0, 0)) in ((128, 128, 128), (127, 127, 127))


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, _, b = open_image(buf.getvalue()).getpixel((10, 10))
    assert r > 200 and b < 50


def test_pixel_limit_refuses_before_decoding() -> None:
    blob = encode(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        open_image(blob, ImageSpec(max_pixels=1_000_000), name="big.png")


@pytest.mark.parametrize("blob", [b"", b"not an image", encode(gradient(), "JPEG")[:200]])
def test_garbage_is_a_decode_error_naming_the_source(blob: bytes) -> None:
    with pytest.raises(ImageDecodeError, match=r"upload\.jpg"):
        preprocess(blob, name="upload.jpg")


def test_output_is_normalized_and_centered() -> None:
    white = preprocess(encode(Image.new("RGB", (500, 300), (255, 255, 255))))
    expected = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(white[:, 100, 100], expected, rtol=1e-5)
    assert torch.from_numpy(white).isfinite().all()
