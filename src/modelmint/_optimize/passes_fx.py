"""Inference-only graph passes on ``torch.fx`` for the torch candidates (eager, channels_last,
``torch.compile``).

Each pass is a function ``GraphModule -> GraphModule`` that never mutates its input and whose
rule is written above it. :func:`run_fx_passes` applies them in order and records the node count
after each, for the report. The rewrites themselves come from PyTorch where it has them
(``torch.fx.experimental.optimization``); the tests compare every pass against eager.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.fx.experimental import optimization as fx_opt

FxPass = Callable[[torch.fx.GraphModule], torch.fx.GraphModule]


@dataclass
class PassRecord:
    """One pass in a pipeline: its name, where the rewrite comes from, node counts around it."""

    name: str
    source: str
    nodes_before: int
    nodes_after: int

    def to_json(self) -> dict[str, object]:
        return {"pass": self.name, "source": self.source, "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after}


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolic trace of an eval-mode copy (the passes below are only valid in eval mode)."""
    return torch.fx.symbolic_trace(copy.deepcopy(model).eval())


def count_nodes(gm: torch.fx.GraphModule) -> int:
    """Operator nodes only: placeholders, parameter reads and the output are not work."""
    return sum(1 for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method"))


# Rule: in eval mode BatchNorm is y = (x - mean) / sqrt(var + eps) * gamma + beta, an affine
# map per channel. When its only input is a Conv (or Linear) whose output nobody else reads,
# the scale goes into the weight and the shift into the bias: W' = W * s, b' = (b - mean) * s +
# beta with s = gamma / sqrt(var + eps). One op and one pass over the activation disappear.
# Source: torch.fx.experimental.optimization.fuse (fuse_conv_bn_eval / fuse_linear_bn_eval).
def fold_batchnorm(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    fused = fx_opt.fuse(gm, inplace=False)
    assert isinstance(fused, torch.fx.GraphModule)
    return fused


# Rule: Dropout is the identity in eval mode; replace each by its input.
# Source: torch.fx.experimental.optimization.remove_dropout.
def remove_dropout(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    out = fx_opt.remove_dropout(copy.deepcopy(gm))
    assert isinstance(out, torch.fx.GraphModule)
    return out


# Rule: a node without side effects whose result no other node reads is dead; drop it, then drop
# submodules no node calls any more (folded BatchNorms). Source: torch.fx Graph.eliminate_dead_code.
def eliminate_dead_code(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    out = copy.deepcopy(gm)
    out.graph.eliminate_dead_code()
    out.delete_all_unused_submodules()
    out.recompile()
    return out


# Rule: x.reshape(s1).reshape(s2) == x.reshape(s2) (and likewise view/flatten chains) when the
# first result has no other reader: shape ops only reinterpret a contiguous buffer. The graph is
# rewritten in torch.fx; PyTorch has no such pass.
def collapse_reshapes(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    out = copy.deepcopy(gm)
    shape_ops = ("reshape", "view")
    for node in list(out.graph.nodes):
        if node.op != "call_method" or node.target not in shape_ops:
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_method"
                and src.target in shape_ops and len(src.users) == 1
                and all(isinstance(a, int) for a in node.args[1:])):
            node.args = (src.args[0], *node.args[1:])
            node.target = "reshape"  # view() would refuse a non-contiguous grandparent
    out.graph.eliminate_dead_code()
    out.recompile()
    return out


FX_PASSES: list[tuple[str, str, FxPass]] = [
    ("fold_batchnorm", "torch.fx.experimental.optimization.fuse", fold_batchnorm),
    ("remove_dropout", "torch.fx.experimental.optimization.remove_dropout", remove_dropout),
    ("collapse_reshapes", "modelmint (torch.fx rewrite)", collapse_reshapes),
    ("eliminate_dead_code", "torch.fx Graph.eliminate_dead_code", eliminate_dead_code),
]


def run_fx_passes(model: nn.Module) -> tuple[torch.fx.GraphModule, list[PassRecord]]:
    """Trace ``model`` and apply every pass in :data:`FX_PASSES`, recording node counts."""
    gm = trace(model)
    records = []
    for name, source, fn in FX_PASSES:
        before = count_nodes(gm)
        gm = fn(gm)
        records.append(PassRecord(name, source, before, count_nodes(gm)))
    return gm.eval(), records


class ChannelsLast(nn.Module):
    """Runs ``inner`` with NHWC weights and input: oneDNN's convolutions are NHWC-native, so the
    layout reorders around every conv disappear. Worth it only where measured (see select.py)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.inner(x.contiguous(memory_format=torch.channels_last))
        return y
