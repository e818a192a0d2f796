"""Graph passes on the ONNX model that gets published.

Our own passes are small rewrites of the ``onnx`` protobuf, each with its rule above it; the
broad ones come from onnxscript's optimizer (constant folding, dead code) and from ONNX Runtime
(``graph_optimization_level``, which fuses Conv+activation, Conv+Add, GELU, attention, ... and
can save the rewritten graph through ``optimized_model_filepath``).

The graph we publish stops at ORT's *basic* level: basic rewrites use standard ONNX ops only,
so the file stays portable, while the extended/all levels insert contrib ops tuned to this
machine (FusedConv, NCHWc layouts). The server's session applies those itself at load time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .passes_fx import PassRecord

OnnxPass = Callable[[onnx.ModelProto], onnx.ModelProto]

ORT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def count_nodes(model: onnx.ModelProto) -> int:
    return len(model.graph.node)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _consumers(graph: onnx.GraphProto) -> dict[str, int]:
    uses: dict[str, int] = {o.name: 1 for o in graph.output}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return uses


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# Rule: eval-mode BatchNormalization after a Conv whose weights are initializers and whose output
# only the BN reads is an affine map per output channel: W' = W * s, b' = (b - mean) * s + beta,
# s = scale / sqrt(var + eps). The BN node disappears and the Conv writes the BN's output.
# (torch.onnx already folds BN when exporting in eval mode; this catches graphs from elsewhere.)
def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    model = _copy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = _consumers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    dead: list[onnx.NodeProto] = []
    for bn in graph.node:
        conv = producer.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if (conv is None or conv.op_type != "Conv" or uses.get(conv.output[0]) != 1
                or len(bn.output) != 1 or conv.input[1] not in inits
                or any(name not in inits for name in bn.input[1:5])):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64)
                                  for n in bn.input[1:5])
        s = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))  # type: ignore[arg-type]
        w = numpy_helper.to_array(inits[conv.input[1]])
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2] else np.zeros_like(mean))
        new_w = (w * s.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        new_b = ((bias - mean) * s + beta).astype(w.dtype)
        w_name, b_name = f"{conv.name or conv.output[0]}_bnw", f"{conv.name or conv.output[0]}_bnb"
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name),
                                  numpy_helper.from_array(new_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        dead.append(bn)
    for node in dead:
        graph.node.remove(node)
    return eliminate_dead_nodes(model)


# Rule: Identity(x) == x. Rewire readers to x; an Identity that produces a graph output stays,
# since the output name is the serving contract.
def remove_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    model = _copy(model)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        if node.output[0] in outputs:
            continue
        _rename_input(graph, node.output[0], node.input[0])
        graph.node.remove(node)
    return model


# Rule: Transpose(p2) after Transpose(p1) is Transpose(p1[p2]) (one reorder instead of two), and
# a Transpose whose permutation is the identity is the identity. Reshape after Reshape is the
# second Reshape alone when its target shape is a constant without 0 (0 copies a dimension of
# the *input*, which differs). In both cases the first node must have no other reader.
def collapse_reshape_transpose(model: onnx.ModelProto) -> onnx.ModelProto:
    model = _copy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    uses = _consumers(graph)
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        first = producer.get(node.input[0]) if node.input else None
        if first is None or first.op_type != node.op_type or uses.get(first.output[0]) != 1:
            continue
        if node.op_type == "Transpose":
            p1 = list(_attr(first, "perm", []))  # type: ignore[call-overload]
            p2 = list(_attr(node, "perm", []))  # type: ignore[call-overload]
            if not p1 or not p2:
                continue
            perm = [p1[i] for i in p2]
            node.input[0] = first.input[0]
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("perm", perm))
        elif node.op_type == "Reshape" and node.input[1] in inits:
            if 0 in numpy_helper.to_array(inits[node.input[1]]).tolist():
                continue
            node.input[0] = first.input[0]
        else:
            continue
        uses[first.output[0]] = 0
    for node in [n for n in graph.node if n.op_type == "Transpose"]:
        perm = list(_attr(node, "perm", []))  # type: ignore[call-overload]
        if perm and perm == sorted(perm) and node.output[0] not in outputs:
            _rename_input(graph, node.output[0], node.input[0])
            graph.node.remove(node)
    return eliminate_dead_nodes(model)


# Rule: a node none of whose outputs is read (by a node or as a graph output) is dead; so is an
# initializer nobody reads. Repeat until nothing changes (removal exposes more dead nodes).
def eliminate_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    model = _copy(model)
    graph = model.graph
    while True:
        uses = _consumers(graph)
        dead = [n for n in graph.node if not any(uses.get(o, 0) for o in n.output if o)]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    uses = _consumers(graph)
    for init in [t for t in graph.initializer if not uses.get(t.name)]:
        graph.initializer.remove(init)
    return model


# Constant folding (subgraphs of constants evaluated once: shape arithmetic, Constant chains),
# dead code and common-subexpression rewrites. Source: onnxscript.optimizer.optimize.
def onnxscript_optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxscript.optimizer  # slow import; only the optimize path needs it

    out: onnx.ModelProto = onnxscript.optimizer.optimize(_copy(model))
    return out


ONNX_PASSES: list[tuple[str, str, OnnxPass]] = [
    ("constant_folding", "onnxscript.optimizer.optimize", onnxscript_optimize),
    ("fold_batchnorm", "modelmint (onnx rewrite)", fold_batchnorm),
    ("remove_identity", "modelmint (onnx rewrite)", remove_identity),
    ("collapse_reshape_transpose", "modelmint (onnx rewrite)", collapse_reshape_transpose),
    ("eliminate_dead_nodes", "modelmint (onnx rewrite)", eliminate_dead_nodes),
]


def ort_optimize(model: onnx.ModelProto, level: str, threads: int = 1) -> onnx.ModelProto:
    """The graph ONNX Runtime runs at ``level``, read back from ``optimized_model_filepath``."""
    with tempfile.TemporaryDirectory(prefix="mint-ort-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ORT_LEVELS[level]
        opts.optimized_model_filepath = str(dst)
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # the 'all' level warns that its output is machine-specific
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(dst))


def run_onnx_passes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Our passes, then ORT's portable basic level; records node counts per pass, plus what
    ORT's extended and all levels would make of the result (counted, not published)."""
    records = []
    for name, source, fn in ONNX_PASSES:
        before = count_nodes(model)
        model = fn(model)
        records.append(PassRecord(name, source, before, count_nodes(model)))
    before = count_nodes(model)
    model = ort_optimize(model, "basic")
    records.append(PassRecord("ort_basic", "onnxruntime ORT_ENABLE_BASIC (published)", before,
                              count_nodes(model)))
    for level in ("extended", "all"):
        records.append(PassRecord(f"ort_{level}", f"onnxruntime ORT_ENABLE_{level.upper()} "
                                  "(at load time; machine-specific, not saved)",
                                  count_nodes(model), count_nodes(ort_optimize(model, level))))
    return model, records
