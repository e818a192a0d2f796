"""A trained detector → one self-contained ``model.onnx`` (``input`` FP32 [N, 3, S, S] →
``dense_boxes`` [N, A, 4] in tensor pixels and ``dense_scores`` [N, A, C], anchors baked in as
constants, dynamic batch) and ``model.safetensors``; the graph is checked against torch on real
val images and refused when it disagrees."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..._repository import ONNX_FILE, OPSET, WEIGHTS_FILE
from ..._tensor_names import DENSE_BOXES, DENSE_SCORES, TENSOR_INPUT
from ...errors import RepositoryError
from .model import Detector

BOX_TOLERANCE = 1e-3  # max |ONNX - torch| box coordinate difference, as a fraction of S
SCORE_TOLERANCE = 1e-4  # max |ONNX - torch| probability difference


def export_detector(model: Detector, directory: Path, architecture: str,
                    sample: np.ndarray) -> Path:
    model = model.eval()
    path = directory / ONNX_FILE
    dummy = torch.zeros(2, 3, model.size, model.size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[TENSOR_INPUT], output_names=[DENSE_BOXES, DENSE_SCORES],
            dynamic_axes={TENSOR_INPUT: {0: "batch"}, DENSE_BOXES: {0: "batch"},
                          DENSE_SCORES: {0: "batch"}})
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE),
              metadata={"architecture": architecture, "input_size": str(model.size),
                        "head": model.kind})
    check_detector(path, model, sample)
    return path


def check_detector(path: Path, model: Detector, sample: np.ndarray) -> None:
    """Refuse to publish a graph whose boxes or scores differ from the trained model's."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_boxes, onnx_scores = session.run([DENSE_BOXES, DENSE_SCORES],
                                          {TENSOR_INPUT: sample.astype(np.float32)})
    with torch.inference_mode():
        boxes, scores = model.eval()(torch.from_numpy(sample.astype(np.float32)))
    box_diff = float(np.abs(onnx_boxes - boxes.numpy()).max()) / model.size
    score_diff = float(np.abs(onnx_scores - scores.numpy()).max())
    if onnx_boxes.shape != tuple(boxes.shape) or box_diff > BOX_TOLERANCE \
            or score_diff > SCORE_TOLERANCE:
        raise RepositoryError(
            f"{path}: exported detector differs from torch (boxes by {box_diff:.2e} of the "
            f"input size, scores by {score_diff:.2e}; shapes {onnx_boxes.shape} vs "
            f"{tuple(boxes.shape)}); not publishing")
