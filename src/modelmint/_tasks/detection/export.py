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
# Faster R-CNN keeps its best proposals by objectness: rounding reorders near-equal ones, and may
# swap the last kept one with the first left out. Its rows are matched as a set, and a few may
# go unmatched.
MAX_UNMATCHED = 0.02


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
    if onnx_boxes.shape != tuple(boxes.shape):
        raise RepositoryError(f"{path}: exported detector's boxes have shape {onnx_boxes.shape}, "
                              f"torch's {tuple(boxes.shape)}; not publishing")
    if model.kind == "faster_rcnn":
        missing = _unmatched_rows(boxes.numpy() / model.size, scores.numpy(),
                                  onnx_boxes / model.size, onnx_scores)
        if missing > MAX_UNMATCHED * boxes.shape[1]:
            raise RepositoryError(
                f"{path}: exported detector differs from torch ({missing} of "
                f"{boxes.shape[1]} rows of one image have no counterpart); not publishing")
        return
    box_diff = float(np.abs(onnx_boxes - boxes.numpy()).max()) / model.size
    score_diff = float(np.abs(onnx_scores - scores.numpy()).max())
    if box_diff > BOX_TOLERANCE or score_diff > SCORE_TOLERANCE:
        raise RepositoryError(
            f"{path}: exported detector differs from torch (boxes by {box_diff:.2e} of the "
            f"input size, scores by {score_diff:.2e}); not publishing")


def _unmatched_rows(boxes: np.ndarray, scores: np.ndarray, other_boxes: np.ndarray,
                    other_scores: np.ndarray) -> int:
    """The most rows of one image (boxes as fractions of the input) that have no row within
    tolerance among the other graph's rows of that image."""
    worst = 0
    for i in range(boxes.shape[0]):
        a = np.concatenate([boxes[i] / BOX_TOLERANCE, scores[i] / SCORE_TOLERANCE], axis=1)
        b = np.concatenate([other_boxes[i] / BOX_TOLERANCE,
                            other_scores[i] / SCORE_TOLERANCE], axis=1)
        found = 0
        for start in range(0, len(a), 64):  # bounded memory at many classes
            gap = np.abs(a[start:start + 64, None, :] - b[None, :, :]).max(axis=2)
            found += int((gap.min(axis=1) <= 1.0).sum())
        worst = max(worst, len(a) - found)
    return worst
