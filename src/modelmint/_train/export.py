"""Torch classifier → one self-contained ``model.onnx`` with a dynamic batch axis.

The TorchScript exporter (``dynamo=False``) writes a single file in about a second; the dynamo
exporter takes 8-14 s here and writes external data, which the repository layout does not want.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._repository import OPSET
from ..errors import RepositoryError

ONNX_TOLERANCE = 1e-4  # max |ONNX - torch| logit difference, relative to scales above 1


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


def check_onnx(path: Path, model: nn.Module, sample: np.ndarray) -> None:
    """Refuse to publish an export that disagrees with the trained weights."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"input": sample})[0]
    with torch.inference_mode():
        torch_logits = model.eval()(torch.from_numpy(sample)).numpy()
    # Relative to the logits' scale: a linear model over standardised statistics can have
    # logits in the tens, where float32 reductions legitimately differ in the 5th digit.
    scale = max(1.0, float(np.abs(torch_logits).max()))
    diff = float(np.abs(onnx_logits - torch_logits).max()) / scale
    if diff > ONNX_TOLERANCE:
        raise RepositoryError(f"{path}: exported logits differ from torch by {diff:.2e} of "
                              f"their scale (> {ONNX_TOLERANCE:g}); not publishing")
