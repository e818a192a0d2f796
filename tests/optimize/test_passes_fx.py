"""Differential tests: every torch.fx pass against the eager model it rewrote."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelmint._optimize import passes_fx
from modelmint._train.backbone import MOBILENET_V2, build

ATOL = 1e-4


class ConvBnRelu(nn.Module):
    """Every rewrite has something to do here: Conv+BN, Linear+BN1d, Dropout, a reshape chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 4 * 4, 6)
        self.bn1 = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.adaptive_avg_pool2d(self.relu(self.bn(self.conv(x))), 4)
        y = y.reshape(y.shape[0], 8, 16).view(-1, 128)
        return self.bn1(self.fc(self.drop(y)))


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so folding BN is not a no-op."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(ConvBnRelu())


@pytest.mark.parametrize("name", [name for name, _, _ in passes_fx.FX_PASSES])
def test_each_fx_pass_matches_eager(tiny: nn.Module, name: str) -> None:
    fn = next(f for n, _, f in passes_fx.FX_PASSES if n == name)
    gm = passes_fx.trace(tiny)
    out = fn(gm)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(out(x), tiny(x), atol=ATOL, rtol=1e-4)
    assert passes_fx.count_nodes(out) <= passes_fx.count_nodes(gm)


def test_fx_pipeline_removes_bn_dropout_and_a_reshape(tiny: nn.Module) -> None:
    gm, records = passes_fx.run_fx_passes(tiny)
    kinds = {type(m) for m in gm.modules()}
    assert not kinds & {nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout}
    assert records[0].nodes_before - records[-1].nodes_after >= 4  # 2 BN, dropout, reshape
    assert [r.name for r in records] == [n for n, _, _ in passes_fx.FX_PASSES]


def test_fx_passes_on_mobilenet_v2_random_weights() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build(MOBILENET_V2, 3, pretrained=False))
    gm, records = passes_fx.run_fx_passes(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(gm(x), ref, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(passes_fx.ChannelsLast(gm)(x), ref, atol=ATOL, rtol=1e-4)
    assert records[0].nodes_after < records[0].nodes_before  # 52 BatchNorms folded
