"""The frozen prefix in ONNX Runtime: the same training step as eager PyTorch (differential)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelmint._profile import StepTracer, analyze
from modelmint._profile.frozen import OnnxFrozenPrefix
from modelmint._profile.workload import Workload, WorkloadConfig

SMALL = WorkloadConfig(batch_size=8, image_limit=32)  # as tests/profile/conftest.py

LOGIT_TOL = 1e-4  # FP32 graph vs graph: only summation order differs
GRAD_TOL = 1e-3  # relative to the gradient's scale
CACHE_RTOL = 1e-5  # activations, relative to the largest one (fused vs unfused FP32 kernels)


def test_onnxruntime_prefix_trains_like_eager_pytorch(hymenoptera: Path, tmp_path: Path,
                                                     backbone_weights: Path) -> None:
    eager = Workload(hymenoptera, SMALL, backbone_weights=backbone_weights)
    fast = Workload(hymenoptera, WorkloadConfig(**{**SMALL.__dict__, "frozen_onnxruntime": True}),
                    backbone_weights=backbone_weights)
    assert isinstance(fast.model.features[0], OnnxFrozenPrefix)
    x, y = eager.sample_batches(1)[0]
    for w in (eager, fast):
        w.trainable_block.train()
        w.optimizer.zero_grad()
        logits = w.model(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        w.logits = logits.detach()  # type: ignore[attr-defined]
    assert torch.allclose(fast.logits, eager.logits, atol=LOGIT_TOL)  # type: ignore[attr-defined]
    for mine, ref in zip(fast.trainable_block.parameters(), eager.trainable_block.parameters(),
                         strict=True):
        assert mine.grad is not None and ref.grad is not None
        scale = ref.grad.abs().max().clamp_min(1e-12)
        assert float((mine.grad - ref.grad).abs().max() / scale) < GRAD_TOL
    # model.train() must not wake the prefix's BatchNorm: it stays an inference graph
    fast.model.train()
    assert not any(m.training for m in fast.model.features[0].module.modules())
    # once ONNX Runtime runs the prefix, the advisor no longer proposes it
    tracer = StepTracer(tmp_path)
    fast.run(tracer, 2)
    tracer.close()
    assert "frozen-prefix" not in [a.rule for a in analyze(tmp_path).advice]
    eager.close()
    fast.close()


def test_a_trainable_module_is_refused() -> None:
    layer = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="trainable"):
        OnnxFrozenPrefix(layer, torch.zeros(1, 4))


def test_advisor_names_the_frozen_prefix_run_by_eager_pytorch(
        bottlenecked_profile: Path) -> None:
    advice = {a.rule: a for a in analyze(bottlenecked_profile).advice}
    frozen = advice["frozen-prefix"]
    assert frozen.knob == "frozen_onnxruntime"
    assert "features[:18]" in frozen.evidence and "% of the parameters" in frozen.evidence


def test_activation_cache_from_onnxruntime_equals_eager_pytorch(hymenoptera: Path) -> None:
    """Both trainers fill their caches with the prefix in ONNX Runtime (the default engine)."""
    from PIL import Image

    from modelmint._data.preprocess import resize_and_crop
    from modelmint._tasks.image.backbones import IMAGE_BACKBONES
    from modelmint._tasks.image.candidates import spec_for
    from modelmint._train.cache import build_cache

    files = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:3]
    items = [(f.name, 0) for f in files]
    for backbone in IMAGE_BACKBONES.values():
        spec = spec_for(backbone, 224)
        crops = {f.name: resize_and_crop(Image.open(f).convert("RGB"), spec) for f in files}
        caches = [build_cache(backbone.build(2).prefix, crops, items, items, spec, ["center"],
                              engine=engine) for engine in ("torch", "onnxruntime")]
        error = (caches[1].train_x - caches[0].train_x).abs().max() / caches[0].train_x.abs().max()
        assert float(error) < CACHE_RTOL, backbone.name


def test_autotune_tries_nothing_past_its_deadline(hymenoptera: Path,
                                                  backbone_weights: Path) -> None:
    import time

    from modelmint._profile.autotune import TuneSettings, autotune

    lines: list[str] = []
    result = autotune(hymenoptera, SMALL, TuneSettings(rounds=1, steps=1), log=lines.append,
                      deadline=time.monotonic(), backbone_weights=backbone_weights)
    # the baseline was profiled and its advice ranked, but no change was started
    assert result.diagnosis["advice"]
    assert [t.reason for t in result.trials] == ["out of time"]
    assert result.final == result.initial
    assert any("out of time" in line for line in lines)
