"""Torch classifier → one self-contained ``model.onnx`` with a dynamic batch axis.

The TorchScript exporter (``dynamo=False``) writes a single file in about a second; the dynamo
exporter takes 8-14 s here and writes external data, which the repository layout does not want.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


class ServingHead(nn.Module):
    """Wraps a classifier so the exported graph returns ``logits`` and ``probabilities``."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(x)
        return logits, torch.softmax(logits, dim=1)


def export_onnx(classifier: nn.Module, path: Path, crop: int = 224) -> Path:
    model = ServingHead(classifier).eval()
    dummy = torch.zeros(2, 3, crop, crop)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits", "probabilities"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"},
                          "probabilities": {0: "batch"}},
        )
    return path
