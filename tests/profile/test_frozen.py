"""The frozen prefix in ONNX Runtime: the same training step as eager PyTorch (differential)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelmint.profile import StepTracer, analyze
from modelmint.profile.frozen import OnnxFrozenPrefix
from modelmint.profile.workload import Workload, WorkloadConfig

SMALL = WorkloadConfig(batch_size=8, image_limit=32)  # as tests/profile/conftest.py

LOGIT_TOL = 1e-4  # FP32 graph vs graph: only summation order differs
GRAD_TOL = 1e-3  # relative to the gradient's scale


def test_onnxruntime_prefix_trains_like_eager_pytorch(hymenoptera: Path, tmp_path: Path
                                                     ) -> None:
    eager = Workload(hymenoptera, SMALL)
    fast = Workload(hymenoptera, WorkloadConfig(**{**SMALL.__dict__, "frozen_onnxruntime": True}))
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


def test_mint_train_fills_its_cache_with_the_engine_auto_tune_kept(hymenoptera: Path,
                                                                   tmp_path: Path) -> None:
    import json

    from PIL import Image

    from modelmint.data.preprocess import ImageSpec, resize_and_crop
    from modelmint.profile.commands import TRAINER_KNOBS, tuned_engine
    from modelmint.train.backbone import BACKBONES, build
    from modelmint.train.cache import build_cache

    assert tuned_engine(tmp_path) == "torch"  # no auto-tune ran
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "autotune.json").write_text(json.dumps(
        {"trainer": {"frozen_onnxruntime": TRAINER_KNOBS["frozen_onnxruntime"]}}))
    assert tuned_engine(tmp_path) == "onnxruntime"

    spec = ImageSpec()
    files = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:3]
    crops = {f.name: resize_and_crop(Image.open(f).convert("RGB"), spec) for f in files}
    items = [(f.name, 0) for f in files]
    caches = [build_cache(build(BACKBONES["mobilenet_v2"], 2).prefix, crops, items, items, spec,
                          ["center"], engine=engine) for engine in ("torch", "onnxruntime")]
    assert torch.allclose(caches[1].train_x, caches[0].train_x, atol=LOGIT_TOL)
