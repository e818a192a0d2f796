"""The preprocessing spec: every odd image kind becomes the same 8-bit RGB the model expects."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from modelmint._data.preprocess import (
    IMAGENET_STD,
    ImageSpec,
    decode_bytes,
    open_image,
    preprocess,
    preprocess_batch,
    resize_and_crop,
    to_tensor,
)
from modelmint._serve.decoding import DecodeBudget
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


@pytest.mark.parametrize("spec", [ImageSpec(), ImageSpec(mean=(0.5, 0.25, 0.0),
                                                          std=(0.5, 2.0, 1.0))])
def test_normalisation_has_the_bits_of_the_per_pixel_formula(spec: ImageSpec) -> None:
    # Every 8-bit value in every channel, against (pixel / 255 - mean) / std computed in FP32.
    rng = np.random.default_rng(0)
    pixels = np.stack([rng.permutation(256).reshape(16, 16) for _ in range(3)], -1)
    pixels = pixels.astype(np.uint8)
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    formula = (scaled - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    ours = to_tensor(Image.fromarray(pixels, "RGB"), spec)
    assert ours.dtype == np.float32 and ours.shape == (3, 16, 16)
    assert ours.flags.c_contiguous and ours.flags.writeable
    assert np.array_equal(ours, formula.transpose(2, 0, 1))


def grey_noise(w: int = 400, h: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


def test_16_bit_pixels_match_the_8_bit_path_within_one_grey_level() -> None:
    eight = grey_noise()
    # The same picture in 16 bits (x * 257 is 8-bit x at full scale), with low-order noise.
    noise = np.random.default_rng(1).integers(-128, 129, eight.shape)
    sixteen = np.clip(eight.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    blob16, blob8 = encode(Image.fromarray(sixteen)), encode(Image.fromarray(eight))
    assert Image.open(io.BytesIO(blob16)).mode == "I;16"
    pixels16 = np.asarray(open_image(blob16), dtype=np.int64)
    assert np.abs(pixels16 - np.asarray(open_image(blob8), dtype=np.int64)).max() <= 1
    one_level = 1 / 255 / min(IMAGENET_STD)
    assert np.abs(preprocess(blob16) - preprocess(blob8)).max() <= one_level + 1e-6


def test_16_bit_full_scale_maps_onto_8_bits() -> None:
    arr = np.array([[0, 128, 129, 385, 32768, 65406, 65535]], dtype=np.uint16)
    decoded = np.asarray(open_image(encode(Image.fromarray(arr))))[0, :, 0]
    assert decoded.tolist() == [0, 0, 1, 1, 128, 254, 255]  # round(v / 257)


@pytest.mark.parametrize("orientation", [1, 6])
def test_serving_path_equals_training_path(orientation: int) -> None:
    # The server resizes grey pictures before they become RGB, and converts in strips;
    # training decodes to full-size RGB first. Both must give the very same tensor.
    exif = Image.Exif()
    exif[0x0112] = orientation
    sources = [encode(Image.fromarray(grey_noise(2500, 700)), exif=exif.tobytes()),
               encode(Image.fromarray(grey_noise(900, 1300).astype(np.uint16) * 250)),
               encode(Image.fromarray(np.dstack([grey_noise(seed=s) for s in range(4)]),
                                      "RGBA"), exif=exif.tobytes()),
               encode(gradient().convert("P"), transparency=3)]
    spec = ImageSpec()
    for blob in sources:
        training = to_tensor(resize_and_crop(open_image(blob, spec), spec), spec)
        assert np.array_equal(preprocess(blob, spec), training)


def test_budget_refuses_from_the_header_before_decoding() -> None:
    # 1x60000 pixels pass the pixel limit, but resizing the short side to 256 would make a
    # 256x15,360,000 picture: refused from the header alone (the pixel data is cut off).
    blob = encode(Image.new("L", (1, 60000)))
    budget = DecodeBudget(512 * 1024 * 1024)
    with pytest.raises(ImageDecodeError, match=r"tall\.png: decoding this 1x60000 PNG image "
                       r"\(mode L\) needs about \d+ MiB, over .* budget of 512 MiB"):
        preprocess(blob[:60], name="tall.png", budget=budget)
    assert budget.used == 0


class WatchedBudget(DecodeBudget):
    """The server's budget, noting what is reserved while each decode runs."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.seen: list[int] = []

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with super().reserve(nbytes):
            self.seen.append(self.used)
            yield


def test_budget_is_held_while_decoding_and_released_after() -> None:
    blob = encode(gradient(1200, 900))
    with Image.open(io.BytesIO(blob)) as img:
        need = decode_bytes(img, ImageSpec())
    budget = WatchedBudget(need)  # exactly enough: accepted
    out = preprocess_batch([blob, blob], ImageSpec(), budget=budget)
    assert out.shape == (2, 3, 224, 224) and budget.seen == [need, need] and budget.used == 0
    with pytest.raises(ImageDecodeError, match="over this server's decode memory budget"):
        preprocess(blob, budget=DecodeBudget(need - 1))


def test_unsupported_formats_are_not_even_tried() -> None:
    blob = encode(gradient(), "PPM")
    with pytest.raises(ImageDecodeError, match=r"x\.ppm: not a decodable image in a supported "
                       r"format \(JPEG, PNG"):
        preprocess(blob, name="x.ppm")


# Measured in a fresh interpreter: the peak RSS of one preprocess() call (Linux resets the
# high-water mark on request) against decode_bytes' estimate from the header.
_MEASURE = r'''
import io, sys
import numpy as np
from PIL import Image
from modelmint._data.preprocess import ImageSpec, decode_bytes, preprocess
from modelmint._serve.decoding import release_free_memory

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

w, h = 4000, 3000
cells = np.random.default_rng(0).integers(0, 256, (h // 50, w // 50, 4), dtype=np.uint8)
base = np.repeat(np.repeat(cells, 50, 0), 50, 1)
rgb = Image.fromarray(base[..., :3].copy(), "RGB")
exif = Image.Exif()
exif[0x0112] = 6
cases = [(Image.fromarray(base[..., 0].astype(np.uint16) * 257), "PNG", {}),
         (Image.fromarray(base, "RGBA"), "PNG", {}),
         (rgb, "JPEG", {"progressive": True, "subsampling": 0}),
         (rgb, "JPEG", {"exif": exif.tobytes()}),
         (Image.fromarray(base, "RGBA"), "WEBP", {"quality": 80}),
         (rgb.convert("CMYK"), "TIFF", {"compression": "tiff_lzw"})]
for img, fmt, kw in cases:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    blob = buf.getvalue()
    with Image.open(io.BytesIO(blob)) as opened:
        need = decode_bytes(opened, ImageSpec())
    release_free_memory()
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    preprocess(blob)
    print(fmt, img.mode, need, status("VmHWM") - before)
'''


def test_decode_bytes_bounds_the_measured_peak() -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    out = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    assert len(rows) == 6
    for fmt, mode, need, used in rows:
        # A bound, and a useful one: not twice what the decode really takes.
        assert int(need) / 2 < int(used) <= int(need), (fmt, mode, int(need), int(used))
