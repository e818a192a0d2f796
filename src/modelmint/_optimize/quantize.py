"""INT8 quantization with ONNX Runtime: static (QDQ, calibrated on the version's own labelled
items) and dynamic (weights quantized ahead, activations per call, no calibration).

Which method applies depends on the graph (:func:`quant_plan`): a graph with convolutions gets
static INT8 only (ORT's dynamic ``ConvInteger`` is slower than FP32 convolutions); a graph
without any but with weight MatMul/Gemm layers (a transformer encoder, a linear model over
TF-IDF or log-mel statistics) gets dynamic INT8 first, the usual for transformers, whose
activation ranges vary per input, and static INT8 beside it. Every variant goes through the
same accuracy gate.

Which INT8 flavour pays depends on the CPU, measured on a 2-core AVX2 EPYC without VNNI
(MobileNetV2, b1/b8): FP32 6.8/45 ms; activations U8 + weights S8 5.2/28 ms; S8/S8 8.3/47 ms (no
gain). Without VNNI, ORT's U8S8 kernels use ``vpmaddubsw``, which saturates its 16-bit sums;
``reduce_range`` (7-bit weights) avoids the saturation: on the hymenoptera model U8S8 lost 6.5
points, U8S8 with reduce_range 0.65. With VNNI (``avx512_vnni`` / ``avx_vnni``) the 32-bit
``vpdpbusd`` accumulates without saturation, so full-range U8S8 is both fast and accurate.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from .._tensor_names import TENSOR_INPUT

STATIC, DYNAMIC = "static", "dynamic"


@dataclass(frozen=True)
class CpuFeatures:
    cores: int
    flags: frozenset[str]
    mhz: float | None

    @property
    def vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    def to_json(self) -> dict[str, Any]:
        simd = sorted(f for f in self.flags if f.startswith(("avx", "fma", "amx", "sse4")))
        return {"cores": self.cores, "vnni": self.vnni, "simd": simd, "mhz": self.mhz}


def cpu_features(cpuinfo: str | None = None) -> CpuFeatures:
    """Flags and clock of this machine from /proc/cpuinfo (empty off Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    mhz: float | None = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "cpu MHz" and mhz is None:
            mhz = float(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuFeatures(cores or 1, frozenset(flags), mhz)


@dataclass(frozen=True)
class QuantConfig:
    name: str
    activation: QuantType
    weight: QuantType
    reduce_range: bool
    why: str
    nodes_to_exclude: tuple[str, ...] = ()
    method: str = STATIC
    per_channel: bool = True

    def to_json(self) -> dict[str, Any]:
        static = self.method == STATIC
        return {"name": self.name, "method": self.method, "activations": self.activation.name,
                "weights": self.weight.name, "reduce_range": self.reduce_range,
                "per_channel": self.per_channel,
                "format": "QDQ" if static else "QOperator (DynamicQuantizeLinear + integer ops)",
                "calibration": "MinMax" if static else "none: activation ranges per call",
                "nodes_to_exclude": list(self.nodes_to_exclude), "why": self.why}

    def excluding(self, nodes: Sequence[str], label: str) -> QuantConfig:
        return replace(self, name=f"{self.name}-{label}", why=f"{self.why}; {label} kept FP32",
                       nodes_to_exclude=tuple(nodes))


def choose_quant_config(features: CpuFeatures) -> QuantConfig:
    """Unsigned activations + signed weights; reduced range unless the CPU has VNNI."""
    if features.vnni:
        return QuantConfig("int8-u8s8", QuantType.QUInt8, QuantType.QInt8, False,
                           "VNNI present: 32-bit dot products, full-range U8S8 is fast and exact")
    return QuantConfig("int8-u8s8-rr", QuantType.QUInt8, QuantType.QInt8, True,
                       "no VNNI: U8S8 is the fast AVX2 kernel; reduce_range avoids the 16-bit "
                       "saturation of vpmaddubsw (S8S8 measured no faster than FP32 here)")


def dynamic_quant_config(features: CpuFeatures) -> QuantConfig:
    """Weights S8 (reduced range unless VNNI, as for static), activations U8 per call;
    per-channel weight scales, as for static (and as benchmarks/optimize.py quantizes BERT)."""
    static = choose_quant_config(features)
    width = "full-range weights: VNNI" if features.vnni else "reduced-range weights: no VNNI"
    return QuantConfig(static.name.replace("int8-", "int8-dynamic-", 1), QuantType.QUInt8,
                       QuantType.QInt8, static.reduce_range,
                       "dynamic: weights quantized ahead, activation ranges measured per call "
                       f"(no calibration); {width}", method=DYNAMIC)


def _weight_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul/Gemm nodes whose second input is a stored weight: what dynamic INT8 quantizes."""
    weights = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in weights]


def quant_plan(model: onnx.ModelProto, features: CpuFeatures) -> list[QuantConfig]:
    """The INT8 methods worth trying on ``model``, each gated on its own (see the module
    docstring): static only with convolutions or without any weight MatMul/Gemm; dynamic, then
    static, otherwise."""
    static = choose_quant_config(features)
    if any(n.op_type == "Conv" for n in model.graph.node) or not _weight_layers(model):
        return [static]
    return [dynamic_quant_config(features), static]


def gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each plain Gemm (alpha = beta = 1, A not transposed, stored weight) as MatMul + Add,
    under the same node name: ORT's dynamic quantizer has no Gemm (a linear layer on a 2-D
    input, as torch exports a classifier head, would stay FP32)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        name = f"{node.input[1]}_matmul"
        graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(weight.T if attrs.get("transB", 0) else weight), name))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{node.output[0]}_matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product],
                                      name=node.name))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]],
                                          name=f"{node.name}_bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    return out


class ArrayReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds preprocessed items to the calibrator in small batches."""

    def __init__(self, images: np.ndarray, input_name: str = TENSOR_INPUT,
                 batch: int = 8) -> None:
        self.images, self.input_name, self.batch = images, input_name, batch
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch):
            yield {self.input_name: self.images[i:i + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def sensitive_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Candidate sets of layers to keep in FP32, from cheapest to broadest: the classifier
    (Gemm/MatMul on the pooled features decides the label), then also the first and last
    layers before it: convs (raw pixels have the widest range; the last feeds the pooled
    features), or in a conv-free graph its first and last weight MatMul/Gemm (a transformer's
    first projection of the embeddings and its last feed-forward output). A set that would
    keep every weight layer in FP32 quantizes nothing and is left out, as is a repeated one."""
    weights = {t.name for t in model.graph.initializer}
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    mats = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    heads = mats[-1:]
    layers = convs or [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")
                       and n.name not in heads and any(i in weights for i in n.input)]
    ends = list(dict.fromkeys([layers[0], layers[-1]])) if layers else []
    every = set(convs) | {n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")
                          and any(i in weights for i in n.input)}
    out: dict[str, list[str]] = {}
    for label, nodes in (("head", heads), ("ends+head", [*ends, *heads])):
        if nodes and not every <= set(nodes) and nodes not in out.values():
            out[label] = nodes
    return out


def preprocess_for_quant(model: onnx.ModelProto, out: Path) -> onnx.ModelProto:
    """ORT's recommended pre-step: symbolic shape inference + basic optimization, so the
    quantizer sees shapes and BatchNorm-free convs."""
    with tempfile.TemporaryDirectory(prefix="mint-qpre-") as tmp:
        src = Path(tmp) / "in.onnx"
        onnx.save(model, str(src))
        quant_pre_process(str(src), str(out))
    return onnx.load(str(out))


def quantize_int8(prepared: Path, out: Path, calibration: np.ndarray,
                  config: QuantConfig, input_name: str = TENSOR_INPUT) -> onnx.ModelProto:
    """Quantize by ``config.method``; ``calibration`` feeds the static method only.

    Static: QDQ; Softmax stays FP32 so ``probabilities`` keeps full resolution. Per-channel
    weight scales: MobileNet's depthwise filters differ in range by orders of magnitude, and one
    scale per tensor cost 4.6 val points on the hymenoptera model (0.65 with per-channel
    scales, measured here). Dynamic: the weight MatMul/Gemm layers only (``MatMulConstBOnly``;
    Gemm rewritten as MatMul + Add first); the attention products of two activations stay
    FP32."""
    excluded = list(config.nodes_to_exclude) or None
    if config.method == DYNAMIC:
        quantize_dynamic(gemm_as_matmul(onnx.load(str(prepared))), str(out),
                         op_types_to_quantize=["MatMul"], per_channel=config.per_channel,
                         reduce_range=config.reduce_range, weight_type=config.weight,
                         nodes_to_exclude=excluded,
                         extra_options={"MatMulConstBOnly": True})
        return onnx.load(str(out))
    ops = ["Conv", "Gemm", "MatMul", "Add", "Mul", "Clip", "Relu", "GlobalAveragePool",
           "ReduceMean", "MaxPool", "AveragePool", "Concat", "Reshape", "Flatten", "Transpose"]
    quantize_static(
        str(prepared), str(out), ArrayReader(calibration, input_name),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ops, per_channel=config.per_channel,
        reduce_range=config.reduce_range, activation_type=config.activation,
        weight_type=config.weight, nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return onnx.load(str(out))


def quantized_nodes(model: onnx.ModelProto) -> int:
    """Nodes that quantize (static QDQ's QuantizeLinear, dynamic's DynamicQuantizeLinear and
    fused DynamicQuantizeMatMul) or compute in integers (MatMulInteger, ConvInteger)."""
    return sum("Quantize" in n.op_type or n.op_type.endswith("Integer")
               for n in model.graph.node)
