"""Differential tests: every ONNX pass against the unoptimized graph, both run by ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from modelmint._optimize import passes_onnx
from modelmint._train.backbone import MOBILENET_V2, build
from modelmint._train.export import export_onnx

ATOL = 1e-4


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, {"input": x})]


def _toy() -> onnx.ModelProto:
    """Conv → BatchNorm → Relu → Identity → Transpose → Transpose(inverse) → Reshape → Reshape,
    plus a dead Sigmoid branch: one target for every rewrite."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(f32), "w"),
        numpy_helper.from_array(rng.normal(size=4).astype(f32), "b"),
        numpy_helper.from_array((rng.random(4) + 0.5).astype(f32), "gamma"),
        numpy_helper.from_array(rng.normal(size=4).astype(f32), "beta"),
        numpy_helper.from_array(rng.normal(size=4).astype(f32) * 0.1, "mean"),
        numpy_helper.from_array((rng.random(4) + 0.5).astype(f32), "var"),
        numpy_helper.from_array(np.array([-1, 4, 64], np.int64), "s1"),
        numpy_helper.from_array(np.array([-1, 256], np.int64), "s2"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"],
                         name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["i"], name="id"),
        helper.make_node("Transpose", ["i"], ["t1"], name="t1", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], name="t2", perm=[0, 3, 1, 2]),
        helper.make_node("Reshape", ["t2", "s1"], ["r1"], name="r1"),
        helper.make_node("Reshape", ["r1", "s2"], ["logits"], name="r2"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
        helper.make_node("Sigmoid", ["r"], ["unused"], name="dead"),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                     ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 256]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 256])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("name", [name for name, _, _ in passes_onnx.ONNX_PASSES])
def test_each_onnx_pass_matches_original(name: str) -> None:
    fn = next(f for n, _, f in passes_onnx.ONNX_PASSES if n == name)
    model = _toy()
    out = fn(model)
    onnx.checker.check_model(out)
    x = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    for got, want in zip(_run(out, x), _run(model, x), strict=True):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)
    assert passes_onnx.count_nodes(out) <= passes_onnx.count_nodes(model)
    assert [o.name for o in out.graph.output] == ["logits", "probabilities"]


def test_own_rewrites_remove_their_targets() -> None:
    model = _toy()
    ops = [n.op_type for n in passes_onnx.fold_batchnorm(model).graph.node]
    assert "BatchNormalization" not in ops and "Sigmoid" not in ops
    ops = [n.op_type for n in passes_onnx.remove_identity(model).graph.node]
    assert "Identity" not in ops
    ops = [n.op_type for n in passes_onnx.collapse_reshape_transpose(model).graph.node]
    assert "Transpose" not in ops and ops.count("Reshape") == 1


def test_onnx_pipeline_on_mobilenet_v2_random_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export_onnx(build(MOBILENET_V2, 3, pretrained=False).eval(), tmp_path / "m.onnx")
    original = onnx.load(str(path))
    optimized, records = passes_onnx.run_onnx_passes(original)
    x = np.random.default_rng(2).normal(size=(2, 3, 224, 224)).astype(np.float32)
    for got, want in zip(_run(optimized, x), _run(original, x), strict=True):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)
    assert records[-1].nodes_after < records[0].nodes_before  # ORT "all" fuses Conv+Clip
    assert passes_onnx.count_nodes(optimized) < passes_onnx.count_nodes(original)
