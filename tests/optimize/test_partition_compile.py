"""Partitioned execution of a model with an operator ONNX export cannot handle: ONNX Runtime
runs the groups around it, torch runs the op; the saved program reloads without the model's
class. Tiny random-weight model (the real models are benchmark-only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_partition_ops import soft_clip
from torch import nn

from modelmint._optimize.partition import partition
from modelmint._optimize.partition_compile import (
    PartitionedProgram,
    export_program,
    onnx_exportable,
    partition_model,
)
from modelmint._serve import partitioned as program_format
from modelmint._serve.partitioned import load_program

TOLERANCE = 1e-4


class ClipNet(nn.Module):
    """conv-bn-relu6 → custom op → conv-bn-relu → residual add → pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU6())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = soft_clip(self.stem(x))
        out: torch.Tensor = self.head(self.body(y) + y)
        return out


def clip_net() -> nn.Module:
    torch.manual_seed(0)
    model = ClipNet()
    for m in model.modules():  # non-trivial BN statistics, so folding them is exercised
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return clip_net()


@pytest.fixture(scope="module")
def partitioned(model: nn.Module) -> PartitionedProgram:
    return partition_model(model, torch.randn(2, 3, 32, 32))


def test_the_custom_op_runs_in_torch_and_the_rest_in_onnx_groups(
        partitioned: PartitionedProgram) -> None:
    assert partitioned.torch_ops == {"soft_clip.default": 1}
    assert len(partitioned.groups) == 2
    assert partitioned.groups[0].ops == {"conv2d.default": 1, "batch_norm.default": 1,
                                         "hardtanh.default": 1}
    assert sum(g.torch_nodes for g in partitioned.groups) == 3 + 7
    calls = [n for n in partitioned.program.graph.nodes
             if n.target is torch.ops.modelmint.onnx_subgraph.default]
    assert len(calls) == 2


@pytest.mark.parametrize("batch", [1, 5])
def test_partitioned_matches_eager(model: nn.Module, partitioned: PartitionedProgram,
                                   batch: int) -> None:
    x = torch.randn(batch, 3, 32, 32)
    with torch.inference_mode():
        diff = (partitioned.module()(x) - model(x)).abs().max().item()
    assert diff <= TOLERANCE


def test_saved_program_reloads_in_a_process_without_the_model_class(
        model: nn.Module, partitioned: PartitionedProgram, tmp_path: Path) -> None:
    partitioned.save(tmp_path / "model.pt2")
    x = torch.randn(4, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.inference_mode():
        torch.save(model(x), tmp_path / "expected.pt")
    # Only the op library and the server's loader are imported (as a server loads kernels);
    # ClipNet never is, nor the compiler.
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_partition_ops
        from modelmint._serve.partitioned import load_program
        module = load_program(__import__("pathlib").Path({str(tmp_path / "model.pt2")!r}))
        x = torch.load({str(tmp_path / "x.pt")!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.inference_mode():
            diff = (module(x) - expected).abs().max().item()
        assert "test_partition_compile" not in sys.modules
        assert not [m for m in sys.modules if m.startswith("modelmint._optimize")]
        mods = list(sys.modules.values())
        assert not any("ClipNet" in getattr(m, "__dict__", {{}}) for m in mods)
        print("DIFF", diff)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    diff = float(out.stdout.split("DIFF")[-1])
    assert diff <= TOLERANCE


def test_same_program_loaded_here_matches(partitioned: PartitionedProgram,
                                          tmp_path: Path, model: nn.Module) -> None:
    partitioned.save(tmp_path / "model.pt2")
    x = torch.randn(3, 3, 32, 32)
    module = load_program(tmp_path / "model.pt2")
    with torch.inference_mode():
        diff = (module(x) - model(x)).abs().max().item()
    assert diff <= TOLERANCE
    keys = program_format.keys_in(module)
    assert len(keys) == 2 and all(k in program_format._sessions for k in keys)
    program_format.release(keys)  # what the server does on unload; the next call re-creates
    assert not any(k in program_format._sessions for k in keys)
    with torch.inference_mode():
        assert (module(x) - model(x)).abs().max().item() <= TOLERANCE


def test_a_narrower_engine_gets_smaller_groups_and_tiny_ones_are_dropped(
        model: nn.Module) -> None:
    """An engine without ReLU6/ReLU, on the exported graph (no compiling: the ONNX path is
    covered above): conv+bn | conv+bn | add..linear; with min_size 3 the 2-op groups drop."""
    base = onnx_exportable()

    def no_relu(node: torch.fx.Node) -> bool:
        return base(node) and "relu" not in str(node.target) and "hardtanh" not in str(
            node.target)
    graph = export_program(model, torch.randn(2, 3, 32, 32)).module().graph
    nodes = list(graph.nodes)
    inputs = {n: n.all_input_nodes for n in nodes}

    def ops(groups: list[list[torch.fx.Node]]) -> list[list[str]]:
        return [[str(n.target).split(".")[1] for n in g] for g in groups]
    every = partition(nodes, inputs, no_relu, min_size=1)
    assert ops(every.groups) == [["conv2d", "batch_norm"], ["conv2d", "batch_norm"],
                                 ["add", "adaptive_avg_pool2d", "flatten", "linear"]]
    kept = partition(nodes, inputs, no_relu, min_size=3)
    assert ops(kept.groups) == [["add", "adaptive_avg_pool2d", "flatten", "linear"]]
    assert len(kept.dropped) == 2
