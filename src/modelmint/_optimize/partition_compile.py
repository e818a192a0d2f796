"""Compile a torch model into a partitioned program: ONNX Runtime runs the groups of operators
the ONNX exporter supports, PyTorch runs the rest (custom ops, anything torchlib lacks).

Steps (each a library of the field where one exists):

1. ``torch.export`` the model with a dynamic batch axis; ``ExportedProgram.module()`` gives
   its ATen-level ``torch.fx`` graph with the weights as ``get_attr`` nodes.
2. :func:`.partition.partition` groups the nodes the engine supports; "supported" is what the
   ONNX exporter's own registry (torchlib) can translate, or decompose into what it can.
3. Each group becomes a small ``GraphModule`` (its weights copied in, so they are ONNX
   initializers that ONNX Runtime can constant-fold and fuse), exported with
   ``torch.onnx.export(dynamo=True)``; a group whose export fails stays in torch (the report
   says so).
4. Each group is replaced by one ``modelmint::onnx_subgraph`` call
   (:mod:`modelmint._serve.partitioned`, the format the server loads) whose ONNX bytes are a
   uint8 constant of the graph, and the graph is exported again: the result, saved with
   ``torch.export.save``, loads with ``torch.export.load`` alone.

Importing this module gives the operator its fake (shape) implementation: the group's own torch
code, known only while its program is being built.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import fx, nn
from torch.export import Dim, ExportedProgram
from torch.fx.passes.tools_common import legalize_graph

from .._profile._torch_private import onnx_translates
from .._repository import METADATA_FILE, ModelMetadata, ModelRepository, VersionRef
from .._serve.partitioned import OP_NAME, key_of, onnx_subgraph
from .._serve.torch_runner import PROGRAM_FILE, TORCH_PARTITIONED
from ..errors import RepositoryError
from .partition import partition

MIN_GROUP_SIZE = 3  # ops; a smaller group costs more in tensor hand-over than it saves

# key → a function computing the outputs' shapes on fake tensors: the group's original torch
# code. torch.export traces the operator on fake tensors while it builds a program.
_shape_functions: dict[str, Callable[..., Any]] = {}


@onnx_subgraph.register_fake
def _(key: str, model: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    fn = _shape_functions.get(key)
    if fn is None:
        raise RuntimeError(f"{OP_NAME}: no shape function for subgraph {key}; a partitioned "
                           "program can be run and saved, not re-traced")
    out = fn(*inputs)
    return [t.clone() for t in (out if isinstance(out, (tuple, list)) else (out,))]


@dataclass
class GroupReport:
    index: int
    torch_nodes: int
    onnx_nodes: int
    onnx_bytes: int
    ops: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "torch_nodes": self.torch_nodes,
                "onnx_nodes": self.onnx_nodes, "onnx_bytes": self.onnx_bytes, "ops": self.ops}


@dataclass
class PartitionedProgram:
    program: ExportedProgram
    groups: list[GroupReport]
    torch_ops: dict[str, int]  # op → count of the operators left to PyTorch
    notes: list[str] = field(default_factory=list)

    def module(self) -> nn.Module:
        return self.program.module()

    def save(self, path: Path) -> None:
        torch.export.save(self.program, str(path))

    def summary(self) -> dict[str, Any]:
        return {"engine": "onnxruntime", "groups": [g.to_json() for g in self.groups],
                "torch_ops": self.torch_ops, "notes": self.notes}


def _op_name(node: fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target))


@functools.cache
def onnx_exportable() -> Callable[[fx.Node], bool]:
    """Nodes the ONNX exporter can translate: ATen ops registered in its torchlib registry or
    decomposed by it into such ops (``getitem`` on a supported tuple result goes along)."""

    def supported(node: fx.Node) -> bool:
        if node.op != "call_function":
            return False
        target = node.target
        if target is operator.getitem:
            src = node.args[0]
            return isinstance(src, fx.Node) and supported(src)
        if not isinstance(node.meta.get("val"), (torch.Tensor, tuple, list)):
            return False  # symbolic ints travel badly between engines; torch keeps them
        return onnx_translates(target)
    return supported


def export_program(model: nn.Module, example: torch.Tensor) -> ExportedProgram:
    """``torch.export`` with a dynamic batch axis (an example batch of 1 would be specialized
    by export, so at least 2 rows are traced)."""
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = Dim("batch", min=1, max=4096)
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # export raises many untyped errors; say what failed
        raise RepositoryError(f"torch.export cannot capture the model: {exc}") from exc


def _attr(module: nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module


class _Recorder(fx.Interpreter):
    """Runs the graph once on the example and keeps every node's value (the example inputs
    of the groups' ONNX exports)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _group_module(gm: fx.GraphModule, group: Sequence[fx.Node]
                  ) -> tuple[fx.GraphModule, list[fx.Node], list[fx.Node]]:
    """The group as a module of its own: outside tensors become placeholders, weights are
    copied in as attributes. Returns it, its outside inputs and its outputs (members read
    outside the group)."""
    members = set(group)
    graph = fx.Graph()
    holder = nn.Module()
    env: dict[fx.Node, fx.Node] = {}
    inputs: list[fx.Node] = []

    def arg(a: fx.Node) -> fx.Node:
        if a not in env:
            if a.op == "get_attr":
                name = f"c{len(env)}"
                holder.register_buffer(name, _attr(gm, str(a.target)).detach())
                env[a] = graph.get_attr(name)
            elif a.target is torch.ops.aten.sym_size.int:
                # A size read outside (e.g. the batch for a view): ONNX takes tensors only,
                # so the group reads the size itself from that tensor.
                source = a.args[0]
                assert isinstance(source, fx.Node)
                env[a] = graph.call_function(a.target, (arg(source), *a.args[1:]))
            else:
                env[a] = graph.placeholder(f"in{len(inputs)}")
                inputs.append(a)
        return env[a]

    for n in group:
        env[n] = graph.node_copy(n, arg)
    outputs = [n for n in group if any(u not in members for u in n.users)]
    graph.output(tuple(env[o] for o in outputs))
    return fx.GraphModule(holder, graph).eval(), inputs, outputs


class _FakeRunner(fx.Interpreter):
    """The group's torch code run on fake tensors: weights become empty tensors of the same
    shape (created under the active fake mode), so only shapes and dtypes propagate."""

    def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
        return torch.empty_like(super().get_attr(target, args, kwargs))


def _to_onnx(sub: fx.GraphModule, examples: list[Any]) -> bytes:
    for x in examples:
        if not isinstance(x.meta.get("val"), torch.Tensor):
            raise RepositoryError(f"input {x.name} is not a tensor")
    dynamic = tuple({i: Dim.AUTO for i, d in enumerate(x.meta["val"].shape)
                     if isinstance(d, torch.SymInt)} for x in examples)
    args = tuple(x.meta["example"] for x in examples)
    program = torch.onnx.export(sub, args, dynamic_shapes=dynamic, dynamo=True, optimize=True,
                                verbose=False, report=False)
    assert program is not None
    buffer = io.BytesIO()
    onnx.save(program.model_proto, buffer)
    return buffer.getvalue()


def partition_model(model: nn.Module, example: torch.Tensor,
                    supported: Callable[[fx.Node], bool] | None = None,
                    min_size: int = MIN_GROUP_SIZE,
                    say: Callable[[str], None] | None = None) -> PartitionedProgram:
    """Export, partition, compile each group to ONNX, and re-export as one program."""
    log = say or (lambda _m: None)
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    gm = export_program(model.eval(), example).module()
    assert isinstance(gm, fx.GraphModule)
    for n in list(gm.graph.nodes):  # export's input guard, re-created by the second export
        if n.op == "call_module" and str(n.target).startswith("_guards"):
            gm.graph.erase_node(n)
    recorder = _Recorder(gm)
    with torch.inference_mode():
        recorder.run(example)
    is_supported = supported or onnx_exportable()
    nodes = list(gm.graph.nodes)
    found = partition(nodes, {n: n.all_input_nodes for n in nodes}, is_supported, min_size)
    notes: list[str] = []
    if found.dropped:
        notes.append(f"{len(found.dropped)} supported group(s) below {min_size} ops left to torch")
    reports: list[GroupReport] = []
    for group in found.groups:
        sub, inputs, outputs = _group_module(gm, group)
        for x in inputs:
            x.meta["example"] = recorder.values[x]
        try:
            onnx_bytes = _to_onnx(sub, inputs)
        except Exception as exc:  # the exporter's errors are untyped: the group stays torch
            notes.append(f"group of {len(group)} ops stays in torch: ONNX export failed "
                         f"({str(exc).splitlines()[0][:200]})")
            continue
        index = len(reports)
        _replace(gm, group, inputs, outputs, sub, onnx_bytes, index)
        reports.append(GroupReport(index, len(group),
                                   len(onnx.load_from_string(onnx_bytes).graph.node),
                                   len(onnx_bytes), dict(Counter(_op_name(n) for n in group))))
        log(f"group {index}: {len(group)} torch ops → ONNX subgraph")
    legalize_graph(gm)
    _drop_unused_weights(gm)
    gm.graph.lint()
    gm.recompile()
    torch_ops = Counter(_op_name(n) for n in gm.graph.nodes if n.op == "call_function"
                        and n.target is not operator.getitem
                        and n.target is not torch.ops.modelmint.onnx_subgraph.default)
    program = export_program(gm, example)
    return PartitionedProgram(program, reports, dict(torch_ops), notes)


def _drop_unused_weights(gm: fx.GraphModule) -> None:
    """Weights now inside ONNX subgraphs would otherwise be saved a second time (export lifts
    every parameter and buffer of the module, used or not)."""
    gm.graph.eliminate_dead_code()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [k for k, _ in gm.named_parameters()] + [k for k, _ in gm.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, leaf)


def _replace(gm: fx.GraphModule, group: Sequence[fx.Node], inputs: list[fx.Node],
             outputs: list[fx.Node], sub: fx.GraphModule, onnx_bytes: bytes, index: int) -> None:
    """One ``onnx_subgraph`` call in place of the group; its ONNX bytes a uint8 buffer."""
    key = key_of(onnx_bytes)
    fake = _FakeRunner(sub)
    _shape_functions[key] = lambda *xs: fake.run(*xs)
    name = f"onnx_subgraph_{index}"
    gm.register_buffer(name, torch.frombuffer(bytearray(onnx_bytes), dtype=torch.uint8))
    graph = gm.graph
    with graph.inserting_before(group[0]):
        blob = graph.get_attr(name)
        call = graph.call_function(torch.ops.modelmint.onnx_subgraph.default,
                                   (key, blob, list(inputs)))
        for k, out in enumerate(outputs):
            item = graph.call_function(operator.getitem, (call, k))
            item.meta["val"] = out.meta.get("val")
            out.replace_all_uses_with(item)
    for n in reversed(group):
        graph.erase_node(n)


def publish_partitioned(repo: ModelRepository, meta: ModelMetadata,
                        partitioned: PartitionedProgram,
                        provenance: dict[str, Any] | None = None) -> VersionRef:
    """A new version holding the program (``model.pt2``) and metadata whose ``runtime`` says
    that serving it needs torch (the server's ONNX-only worker hands it to
    :mod:`modelmint._serve.torch_runner`). No ``model.onnx``: no single ONNX graph exists."""
    def write(directory: Path, version: int) -> None:
        partitioned.save(directory / PROGRAM_FILE)
        data = meta.to_json()
        data["version"] = version
        data["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        data["runtime"] = TORCH_PARTITIONED
        data["provenance"] = {**meta.provenance, **(provenance or {})}
        data["partition"] = partitioned.summary()
        data["files"] = {"program": PROGRAM_FILE}
        (directory / METADATA_FILE).write_text(json.dumps(data, indent=2))
    return repo.publish(meta.name, write)
