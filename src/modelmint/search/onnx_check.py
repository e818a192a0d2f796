"""Export a small torch classifier (any input shape) to ``model.onnx`` and check it, for the
sound and text candidates (the image path has :mod:`modelmint.train.export`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import RepositoryError
from ..repository import ONNX_FILE, WEIGHTS_FILE
from ..train.export import OPSET, ServingHead

ONNX_TOLERANCE = 1e-4


def export_checked(model: nn.Module, directory: Path, sample: np.ndarray,
                   architecture: str) -> Path:
    """Write ``model.onnx`` (input ``input``, outputs ``logits`` + ``probabilities``, dynamic
    batch) and ``model.safetensors``; refuse an export whose logits differ from torch."""
    from safetensors.torch import save_file

    model = model.eval()
    path = directory / ONNX_FILE
    dummy = torch.from_numpy(np.ascontiguousarray(sample[:2]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ServingHead(model).eval(), (dummy,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits", "probabilities"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"},
                          "probabilities": {0: "batch"}})
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"architecture": architecture})
    check_onnx(path, model, sample)
    return path


def check_onnx(path: Path, model: nn.Module, sample: np.ndarray) -> None:
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


def linear_from_sklearn(coef: np.ndarray, intercept: np.ndarray, classes: int) -> nn.Linear:
    """scikit-learn's linear classifier as ``nn.Linear``. A binary model has one row: its
    probability is sigmoid(z) = softmax([0, z]), so the logits are ``[0, z]``."""
    weight = np.asarray(coef, np.float32)
    bias = np.asarray(intercept, np.float32)
    if weight.shape[0] == 1 and classes == 2:
        weight = np.concatenate([np.zeros_like(weight), weight])
        bias = np.concatenate([np.zeros_like(bias), bias])
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    return layer
