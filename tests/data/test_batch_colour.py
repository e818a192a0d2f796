"""Batched colour jitter against torchvision's per-sample PIL chain (differential tests).

Tolerances are in 8-bit grey levels: PIL rounds down to uint8 after each of the three
enhancements (a bias of about half a level each) and clips after each one, where the batched
map stays float and clips once; pixels that one enhancement clips and a later one would bring
back are the rare large differences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as v1

from modelmint._data.batch_colour import BatchColour, CropFlipJitter, pil_reference
from modelmint._data.preprocess import IMAGENET_MEAN, IMAGENET_STD

STD_LEVELS = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255  # normalised units → grey levels


def images(root: Path, count: int = 12) -> list[Image.Image]:
    files = sorted((root / "train").glob("*/*.jpg"))[:count]
    return [v1.Resize(256)(Image.open(f).convert("RGB")) for f in files]


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs() * STD_LEVELS


def test_same_seed_same_augmentation_as_the_pil_chain(hymenoptera: Path) -> None:
    """Crop, flip and jitter factors come from the same torch random stream in the same
    order, so a seeded run reproduces the PIL chain's augmentation image for image."""
    pil_chain = v1.Compose([
        v1.RandomCrop(224), v1.RandomHorizontalFlip(), v1.ColorJitter(0.4, 0.4, 0.4),
        v1.ToTensor(), v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    per_sample, batch = CropFlipJitter(224, 0.4, 0.4, 0.4), BatchColour(IMAGENET_MEAN,
                                                                        IMAGENET_STD)
    imgs = images(hymenoptera)
    torch.manual_seed(7)
    reference = torch.stack([pil_chain(img) for img in imgs])
    torch.manual_seed(7)
    ours, labels = batch([(per_sample(np.asarray(img)), i) for i, img in enumerate(imgs)])
    assert ours.shape == reference.shape == (len(imgs), 3, 224, 224)
    assert ours.dtype == torch.float32 and labels.tolist() == list(range(len(imgs)))
    diff = levels(ours, reference)
    assert diff.mean() < 2.5  # measured 1.5
    assert torch.quantile(diff.flatten()[::7], 0.99) < 12  # measured ~9
    per_image = diff.mean(dim=(1, 2, 3))
    assert per_image.max() < 4  # a wrong crop, flip or order would be tens of levels off


def test_every_order_of_the_three_enhancements(hymenoptera: Path) -> None:
    img = images(hymenoptera, 1)[0].crop((0, 0, 224, 224))
    batch = BatchColour(IMAGENET_MEAN, IMAGENET_STD)
    pixels = torch.from_numpy(np.asarray(img).copy())[None]
    factors = {0: 1.15, 1: 0.8, 2: 1.3}  # mild: hardly anything clips
    for order in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        params = [v for i in order for v in (float(i), factors[i])]
        ours = batch.apply(pixels, [params])[0]
        diff = levels(ours, pil_reference(img, params, IMAGENET_MEAN, IMAGENET_STD))
        assert diff.mean() < 2.0, order
        assert torch.quantile(diff.flatten(), 0.999) < 6, order


def test_identity_factors_equal_to_tensor_and_normalize(hymenoptera: Path) -> None:
    img = images(hymenoptera, 1)[0].crop((10, 5, 234, 229))
    pixels = torch.from_numpy(np.asarray(img).copy())[None]
    ours = BatchColour(IMAGENET_MEAN, IMAGENET_STD).apply(pixels, [[0, 1.0, 1, 1.0, 2, 1.0]])
    expected = v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)(v1.ToTensor()(img))
    torch.testing.assert_close(ours[0], expected, atol=1e-5, rtol=0)


def test_hue_and_small_images_are_refused() -> None:
    with pytest.raises(ValueError, match="hue"):
        CropFlipJitter(224, 0.4, 0.4, 0.4, hue=0.1)
    with pytest.raises(ValueError, match="smaller than the 224"):
        CropFlipJitter(224, 0.4, 0.4, 0.4)(np.zeros((100, 300, 3), np.uint8))
