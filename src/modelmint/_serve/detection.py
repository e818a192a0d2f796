"""An object detector's serving semantics, and its detections read back by clients.

Server side (:class:`Detector`, used by :class:`.model.LoadedModel` for a version whose
preprocessing kind is ``letterbox``): ``image`` files are letterboxed into the graph's square
``input`` and each one's :class:`~modelmint._data.detection.Letterbox` rides on the request
(``InferRequest.letterboxes``) from ``prepare`` to ``respond``, so dynamic batching may merge
images of any sizes; after the graph, :func:`~modelmint._data.detection.select_detections` turns
the dense candidates into the served ``boxes``/``scores``/``classes``/``count``, boxes mapped back
onto each original image (an FP32 ``input`` request keeps tensor pixels). The request
parameters ``score_threshold`` and ``max_detections`` override the version's defaults.

Client side (``mint predict``): :func:`read_detections` turns such a response into labelled
boxes per image and :func:`save_annotated` writes annotated copies of the images. Must not
import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageDraw

from .._data.detection import Letterbox, LetterboxSpec, letterbox_batch, select_detections
from .._data.preprocess import MemoryBudget, open_image
from .._repository import TensorSpec
from .._repository.metadata import detection_graph_outputs
from .._tensor_names import (
    BOXES,
    CLASSES,
    COUNT,
    DENSE_BOXES,
    DENSE_SCORES,
    IMAGE_INPUT,
    MAX_DETECTIONS,
    SCORE_THRESHOLD,
    SCORES,
)
from ..errors import InvalidInput, MintError, RepositoryError
from .tensors import short
from .types import InferRequest, InferResponse, Outputs
from .v2client import bytes_request

# The model metadata parameter that names a detector's classes (V2 metadata has no labels).
LABELS_PARAMETER = "labels"
_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60))


def detection_outputs(names: list[str]) -> bool:
    """Whether a signature's outputs are a detector's (boxes, scores, classes, count)."""
    return {BOXES, SCORES, CLASSES, COUNT} <= set(names)


@dataclass(frozen=True)
class Selection:
    """The box selection of one request: the version's defaults, or its parameters."""

    score_threshold: float
    max_detections: int


class Detector:
    """One detector version's request options, letterboxing and box selection."""

    def __init__(self, spec: LetterboxSpec, labels: list[str], what: str) -> None:
        self.spec = spec
        self.classes = len(labels)
        self.what = what  # "model 'm' version v", for the errors that are the model's fault

    @property
    def graph_outputs(self) -> list[TensorSpec]:
        """What the graph returns (not what is served)."""
        return detection_graph_outputs(self.classes)

    def selection(self, parameters: dict[str, Any]) -> Selection:
        """The request's ``score_threshold`` and ``max_detections``, checked (a 400 names the
        parameter), else the version's defaults."""
        k = self.spec.max_detections
        threshold: Any = parameters.get(SCORE_THRESHOLD, self.spec.score_threshold)
        if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0):
            raise InvalidInput(f"request parameter {SCORE_THRESHOLD!r} is {short(threshold)}; "
                               "expected a number from 0 to 1")
        limit: Any = parameters.get(MAX_DETECTIONS, k)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= k:
            raise InvalidInput(f"request parameter {MAX_DETECTIONS!r} is {short(limit)}; expected "
                               f"an integer from 1 to {k} (this model's most detections per "
                               "image)")
        return Selection(float(threshold), limit)

    def letterbox(self, blobs: list[bytes], name: str, budget: MemoryBudget | None
                  ) -> tuple[np.ndarray, list[Letterbox]]:
        return letterbox_batch(blobs, self.spec, name=name, budget=budget)

    def select(self, request: InferRequest, outputs: Outputs, rows: int) -> Outputs:
        """Dense candidates → the served outputs, boxes in each original image's pixels when
        the request sent ``image`` files."""
        boxes = self._dense(outputs, DENSE_BOXES, rows, (4,))
        scores = self._dense(outputs, DENSE_SCORES, rows, (self.classes,))
        if boxes.shape[1] != scores.shape[1]:
            raise RepositoryError(f"{self.what}: {DENSE_BOXES!r} has {boxes.shape[1]} "
                                  f"candidates but {DENSE_SCORES!r} has {scores.shape[1]}")
        chosen = self.selection(request.parameters)
        out_boxes, out_scores, out_classes, count = select_detections(
            boxes, scores, score_threshold=chosen.score_threshold, nms_iou=self.spec.nms_iou,
            max_detections=chosen.max_detections, k=self.spec.max_detections)
        geometry = request.letterboxes
        if geometry is not None:
            if len(geometry) != rows:
                raise RepositoryError(f"{self.what}: {len(geometry)} letterboxed images for "
                                      f"{rows} result rows")
            for i, box in enumerate(geometry):
                n = int(count[i])
                out_boxes[i, :n] = box.to_image(out_boxes[i, :n])
        return {BOXES: out_boxes, SCORES: out_scores, CLASSES: out_classes, COUNT: count}

    def _dense(self, outputs: Outputs, name: str, rows: int,
               trailing: tuple[int, ...]) -> np.ndarray:
        data = outputs.get(name)
        if (data is None or data.ndim != 3 or data.shape[0] != rows
                or data.shape[2:] != trailing or data.dtype != np.float32):
            got = "nothing" if data is None else f"{data.dtype} {list(data.shape)}"
            raise RepositoryError(f"{self.what}: graph output {name!r} is {got}, expected "
                                  f"float32 [{rows}, candidates, {trailing[0]}]")
        return data


# --- clients: a response's detections, and annotated pictures ----------------------------------

def detection_request(blobs: list[bytes], options: dict[str, Any]) -> InferRequest:
    """A request for the detections in encoded images; ``options``: request parameters such as
    ``score_threshold``."""
    request = bytes_request(IMAGE_INPUT, blobs)
    request.parameters = dict(options)
    return request


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "box": list(self.box)}


@dataclass
class DetectionPrediction:
    """A detector's boxes for one image file (pixels of the upright image), best first."""

    file: str
    detections: list[Detection] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file,
                               "detections": [d.to_json() for d in self.detections]}
        if self.error is not None:
            out["error"] = self.error
        return out


def read_detections(response: InferResponse, labels: list[str]) -> list[list[Detection]]:
    """Each image's detections (best first) from a detector's response."""
    try:
        boxes, scores = response.output(BOXES).data, response.output(SCORES).data
        classes, count = response.output(CLASSES).data, response.output(COUNT).data
    except KeyError as exc:
        present = [o.name for o in response.outputs]
        raise MintError(f"the response has no output {exc.args[0]!r} (it has {present}); is "
                        "this model a detector?") from None
    found = []
    for i in range(len(count)):
        row = []
        for j in range(int(count[i])):
            index = int(classes[i, j])
            label = labels[index] if 0 <= index < len(labels) else str(index)
            x1, y1, x2, y2 = (float(v) for v in boxes[i, j])
            row.append(Detection(label, float(scores[i, j]), (x1, y1, x2, y2)))
        found.append(row)
    return found


def draw_detections(source: bytes | Path, detections: list[Detection], target: Path) -> None:
    """An annotated copy of the image: each box outlined, with its label and score. The image
    is decoded upright (EXIF applied), as the server decoded it, so the boxes land in place."""
    picture = open_image(source).copy()
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(picture.size) / 300))
    colours: dict[str, tuple[int, int, int]] = {}
    for d in detections:
        colour = colours.setdefault(d.label, _PALETTE[len(colours) % len(_PALETTE)])
        draw.rectangle(d.box, outline=colour, width=width)
        text = f"{d.label} {d.score:.2f}"
        left, top, right, bottom = draw.textbbox((d.box[0], d.box[1]), text)
        height = bottom - top
        at = (d.box[0], d.box[1] - height - 2 if d.box[1] >= height + 2 else d.box[1])
        left, top, right, bottom = draw.textbbox(at, text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        draw.text(at, text, fill=(255, 255, 255))
    target.parent.mkdir(parents=True, exist_ok=True)
    jpeg = target.suffix.lower() in (".jpg", ".jpeg")
    picture.save(target, format="JPEG" if jpeg else "PNG")


def save_annotated(preds: Sequence[DetectionPrediction], directory: Path) -> list[Path]:
    """An annotated copy of every image predicted without error (its boxes and labels drawn)
    in ``directory``, under the image's name (PNG unless it was a JPEG or PNG)."""
    written: list[Path] = []
    for pred in preds:
        if pred.error is not None:
            continue
        source = Path(pred.file)
        keep = source.suffix.lower() in (".jpg", ".jpeg", ".png")
        stem, suffix = (source.stem, source.suffix) if keep else (source.name, ".png")
        target, n = directory / f"{stem}{suffix}", 2
        while target in written:  # same names from different folders
            target, n = directory / f"{stem}-{n}{suffix}", n + 1
        draw_detections(source, pred.detections, target)
        written.append(target)
    return written
