"""OpenVINO reads the same ONNX graph and answers like ONNX Runtime (when installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelmint._optimize.measure import ort_runner, ort_session
from modelmint._optimize.openvino_path import openvino_candidates
from modelmint._train.export import export_onnx

pytest.importorskip("openvino")


def test_openvino_matches_onnxruntime_at_any_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.BatchNorm2d(4), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", crop=32)
    notes: list[str] = []
    (cand,) = openvino_candidates(str(path), notes)
    assert cand.engine == "openvino" and cand.onnx_path is None  # measured, not servable
    reference = ort_runner(ort_session(str(path)))
    for batch in (1, 8):
        x = np.random.default_rng(batch).normal(size=(batch, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(cand.run(x)), reference(x), atol=1e-4)
    assert notes == []


def test_an_unreadable_graph_is_skipped_with_a_note(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    notes: list[str] = []
    assert openvino_candidates(str(bad), notes) == []
    assert notes and notes[0].startswith("openvino skipped: cannot compile")
