"""A custom operator the ONNX exporter cannot translate, for the partitioning tests.

Kept in a module of its own so that a fresh process can register the operator (as a server
would load a kernel library) without importing the test model's Python class.
"""

from __future__ import annotations

import torch

OP = "mmtest::soft_clip"


@torch.library.custom_op(OP, mutates_args=())
def soft_clip(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-2.0, 2.0) * 0.5 + torch.tanh(x) * 0.5


@soft_clip.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def test_the_custom_op_is_not_onnx_exportable() -> None:
    """The premise of the partitioning tests: whole-model ONNX export fails on this op."""
    import pytest

    class Clip(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = soft_clip(x)
            return out

    with pytest.raises(Exception, match="soft_clip"):
        torch.onnx.export(Clip().eval(), (torch.randn(2, 3),), dynamo=True, verbose=False,
                          report=False)
