"""A small real object detector, published into a model repository like a trained one.

The graph (a deterministic torch module exported to ONNX with a dynamic batch) finds pure
colours: for each of red, green and blue, the pixels whose channel exceeds the other two by more
than 0.25 form that class's box (x1, y1, x2, y2 in tensor pixels) and their largest excess is its
score. So a bright red square on a white picture is found exactly where it was drawn with a
score near 1, a dim one (``(150, 0, 0)``) with a score near 0.59. The dense outputs have one
candidate per class (``dense_boxes`` [N, 3, 4], ``dense_scores`` [N, 3, 3]).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from modelmint._data.detection import LetterboxSpec
from modelmint._repository import ONNX_FILE, ModelMetadata, VersionRef
from modelmint._repository.metadata import OPSET, detection_signature
from modelmint._search.publish import publish_version
from modelmint._tensor_names import DENSE_BOXES, DENSE_SCORES, TENSOR_INPUT

if TYPE_CHECKING:
    from torch import nn

LABELS = ["red", "green", "blue"]
SIZE = 256  # S: fine enough that boxes map back to the original pixels within a few px
MAX_DETECTIONS = 10  # K
SPEC = LetterboxSpec(resize=SIZE, crop=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                     max_detections=MAX_DETECTIONS, score_threshold=0.3)
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
           "dim-red": (150, 0, 0), "dim-green": (0, 150, 0)}
Square = tuple[str, tuple[int, int, int, int]]  # colour name, (x1, y1, x2, y2)


def picture(width: int, height: int, squares: list[Square], fmt: str = "PNG") -> bytes:
    """An encoded white ``width x height`` image with filled squares at exact pixel boxes."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    pixels = np.asarray(img).copy()
    for colour, (x1, y1, x2, y2) in squares:
        pixels[y1:y2, x1:x2] = COLOURS[colour]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def _module() -> nn.Module:
    import torch
    from torch import nn

    class PureColours(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            r, g, b = x[:, 0], x[:, 1], x[:, 2]
            others = torch.stack([torch.maximum(g, b), torch.maximum(r, b),
                                  torch.maximum(r, g)], 1)
            excess = x - others  # [N, 3, H, W]
            mask = excess > 0.25
            h, w = x.shape[2], x.shape[3]
            ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand_as(excess)
            xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand_as(excess)
            big = torch.tensor(1e6)
            x1 = torch.where(mask, xs, big).amin(dim=(2, 3))
            y1 = torch.where(mask, ys, big).amin(dim=(2, 3))
            x2 = torch.where(mask, xs + 1, -big).amax(dim=(2, 3))
            y2 = torch.where(mask, ys + 1, -big).amax(dim=(2, 3))
            found = mask.float().amax(dim=(2, 3))  # [N, 3]: 1 where the colour is present
            boxes = torch.stack([x1, y1, x2, y2], -1) * found[..., None]
            score = excess.amax(dim=(2, 3)).clamp(0.0, 1.0) * found
            scores = score[:, :, None] * torch.eye(3)[None]  # candidate c is class c
            return boxes, scores

    return PureColours().eval()


@dataclass
class TinyDetector:
    """What publishing needs: ``export`` writes model.onnx, ``warmup_payloads`` the recorded
    request's image."""

    def export(self, directory: Path) -> None:
        import torch

        sample = torch.from_numpy(np.random.default_rng(0).random((2, 3, SIZE, SIZE),
                                                                   np.float32))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _module(), (sample,), str(directory / ONNX_FILE), dynamo=False,
                opset_version=OPSET, input_names=[TENSOR_INPUT],
                output_names=[DENSE_BOXES, DENSE_SCORES],
                dynamic_axes={TENSOR_INPUT: {0: "batch"}, DENSE_BOXES: {0: "batch"},
                              DENSE_SCORES: {0: "batch"}})

    def warmup_payloads(self) -> list[bytes]:
        return [picture(120, 90, [("red", (10, 10, 50, 40))])]


def detector_metadata(name: str, spec: LetterboxSpec = SPEC) -> ModelMetadata:
    inputs, outputs = detection_signature(spec)
    return ModelMetadata(name=name, labels=list(LABELS), architecture="pure-colours",
                         preprocessing=spec, task="object-detection", inputs=inputs,
                         outputs=outputs)


def publish_detector(repo: Path, name: str = "shapes") -> VersionRef:
    """Publish the detector as the next version of ``name`` in ``repo``."""
    return publish_version(repo, detector_metadata(name), TinyDetector())
