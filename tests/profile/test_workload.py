"""The batch-level colour jitter against torchvision's per-image functional ops."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

from modelmint.profile.workload import batch_color_jitter

OPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)


def test_batch_color_jitter_equals_torchvision_per_image_with_the_same_factors() -> None:
    images = torch.rand(6, 3, 40, 32, generator=torch.Generator().manual_seed(3))
    got = batch_color_jitter(images.clone(), 0.4, torch.Generator().manual_seed(11))
    # The same draws, in the same order, as the function makes them.
    rng = torch.Generator().manual_seed(11)
    factors = 0.6 + 0.8 * torch.rand(3, 6, 1, 1, 1, generator=rng)
    order = torch.randperm(3, generator=rng).tolist()
    for i in range(6):
        expected = images[i]
        for op in order:
            expected = OPS[op](expected, float(factors[op, i]))
        torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=0)
    assert factors.flatten().unique().numel() == 18  # each image got its own factors
    assert not torch.allclose(got, images, atol=1e-3)  # it did change the images


def test_zero_strength_is_the_identity() -> None:
    images = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(batch_color_jitter(images.clone(), 0.0), images)
