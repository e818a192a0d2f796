"""Export a small torch classifier (any input shape) to ``model.onnx`` and check it, for the
sound and text candidates (the image path has :mod:`modelmint._train.export`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._repository import ONNX_FILE, OPSET, WEIGHTS_FILE
from .._train.export import ServingHead, check_onnx


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
