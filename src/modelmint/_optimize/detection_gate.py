"""The accuracy gate of ``mint optimize`` for an object detector.

A lower-precision detector is kept only if its mAP@.5 on the version's own validation images
(the split its provenance records, letterboxed with its own spec, the server's box selection
applied) is at most ``max_accuracy_drop`` points (hundredths of mAP) below the FP32 graph's.
Beside the gate the report shows how far its boxes moved: each confident INT8 detection is
paired, per image and class, with the FP32 detection it overlaps most, and the IoU of the pairs
is summarised (mean, min, max), with the detections left unpaired on either side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .._data.dataset import TaskData
from .._data.detection import Letterbox, LetterboxSpec, box_iou, letterbox, select_detections
from .._repository import METADATA_FILE, ModelMetadata
from .._tasks.detection.evaluate import CONFIDENT, mean_average_precision
from .._tensor_names import DENSE_BOXES, DENSE_SCORES, TENSOR_INPUT
from ..errors import DataError, InvalidInput
from .measure import Runner

DETECTION_TASK = "object-detection"
Prediction = dict[str, Any]  # {"boxes": [N, 4] original pixels, "scores": [N], "labels": [N]}


@dataclass
class DetectionImages:
    """The version's labelled images, letterboxed, with their targets in original pixels."""

    images: np.ndarray  # [N, 3, S, S] FP32
    geometry: list[Letterbox]
    targets: list[tuple[str, dict[str, Any]]]  # (file relative to root, target)
    is_val: np.ndarray  # [N] bool
    root: Path
    labels: list[str]
    spec: LetterboxSpec

    def val_data(self) -> TaskData:
        val = [t for t, v in zip(self.targets, self.is_val, strict=True) if v]
        return TaskData(task=DETECTION_TASK, root=self.root, labels=self.labels, train=[],
                        val=val, split_note="the version's validation split")


def _target(item: Any, labels: int, where: str) -> tuple[str, dict[str, Any]]:
    """One ``[file, {"boxes", "labels", ...}]`` entry of the recorded split, checked."""
    expected = ('expected [file, {"boxes": [[x1, y1, x2, y2], ...], "labels": [class index, '
                '...]}]')
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], dict)):
        raise DataError(f"{where} is {item!r:.120}; {expected}")
    target = item[1]
    try:
        boxes = np.asarray(target.get("boxes", []), np.float64).reshape(-1, 4)
        classes = np.asarray(target.get("labels", []), np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{where} has malformed boxes or labels; {expected}") from None
    if len(boxes) != len(classes) or ((classes < 0) | (classes >= labels)).any():
        raise DataError(f"{where}: {len(boxes)} boxes and labels {classes.tolist()}; expected "
                        f"one label per box, each a class index below {labels}")
    return item[0], target


def load_detection_images(meta: ModelMetadata, version_dir: Path,
                          limit: int | None = None) -> DetectionImages | None:
    """The version's own split (provenance), letterboxed with its own spec; None when the
    provenance names no readable images."""
    spec = meta.preprocessing
    if not isinstance(spec, LetterboxSpec):
        raise DataError(f"{version_dir / METADATA_FILE}: an {DETECTION_TASK} version with "
                        f"preprocessing kind {spec.kind!r}; expected 'letterbox'")
    root, split = meta.provenance.get("data_root"), meta.provenance.get("split") or {}
    if not root or not isinstance(split, dict):
        return None
    images, geometry, targets, is_val = [], [], [], []
    for part in ("train", "val"):
        for i, item in enumerate(list(split.get(part) or [])[:limit]):
            where = f"{version_dir / METADATA_FILE}: field 'provenance.split.{part}[{i}]'"
            rel, target = _target(item, len(meta.labels), where)
            file = Path(root) / rel
            if not file.is_file():
                continue
            try:
                tensor, box = letterbox(file, spec)
            except InvalidInput:  # an image that no longer decodes is left out, like a gone one
                continue
            images.append(tensor)
            geometry.append(box)
            targets.append((rel, {"width": box.width, "height": box.height, **target}))
            is_val.append(part == "val")
    if not images:
        return None
    return DetectionImages(np.stack(images), geometry, targets, np.asarray(is_val), Path(root),
                           list(meta.labels), spec)


def detection_runner(session: Any) -> Runner:
    """The graph's two outputs, ``(dense_boxes, dense_scores)``."""
    def run(x: np.ndarray) -> Any:
        return tuple(session.run([DENSE_BOXES, DENSE_SCORES], {TENSOR_INPUT: x}))
    return run


def detect(run: Runner, data: DetectionImages, batch: int = 16) -> list[Prediction]:
    """Every image's detections in its original pixels, selected as the server does."""
    spec, out = data.spec, []
    for start in range(0, len(data.images), batch):
        dense_boxes, dense_scores = run(np.ascontiguousarray(data.images[start:start + batch]))
        boxes, scores, classes, count = select_detections(
            np.asarray(dense_boxes), np.asarray(dense_scores),
            score_threshold=spec.score_threshold, nms_iou=spec.nms_iou,
            max_detections=spec.max_detections, k=spec.max_detections)
        for j in range(len(count)):
            n = int(count[j])
            out.append({"boxes": data.geometry[start + j].to_image(boxes[j, :n]),
                        "scores": scores[j, :n], "labels": classes[j, :n]})
    return out


def box_agreement(preds: list[Prediction], reference: list[Prediction],
                  min_score: float = CONFIDENT) -> dict[str, Any]:
    """Confident detections of ``preds`` paired one to one, per image and class, with those of
    ``reference`` (highest IoU first, any overlap): the IoU of the pairs and what stayed
    unpaired on each side."""
    ious: list[float] = []
    alone = alone_ref = 0
    for pred, ref in zip(preds, reference, strict=True):
        a_keep, b_keep = pred["scores"] >= min_score, ref["scores"] >= min_score
        a_boxes, a_cls = np.asarray(pred["boxes"])[a_keep], np.asarray(pred["labels"])[a_keep]
        b_boxes, b_cls = np.asarray(ref["boxes"])[b_keep], np.asarray(ref["labels"])[b_keep]
        paired = 0
        for cls in set(a_cls.tolist()) & set(b_cls.tolist()):
            overlap = box_iou(a_boxes[a_cls == cls], b_boxes[b_cls == cls])
            while overlap.size and overlap.max() > 0:
                i, j = np.unravel_index(int(overlap.argmax()), overlap.shape)
                ious.append(float(overlap[i, j]))
                overlap[i, :] = overlap[:, j] = -1.0
                paired += 1
        alone += len(a_boxes) - paired
        alone_ref += len(b_boxes) - paired

    def r(v: float) -> float:
        return round(v, 4)
    return {"min_score": min_score, "pairs": len(ious),
            "mean": r(float(np.mean(ious))) if ious else None,
            "min": r(min(ious)) if ious else None, "max": r(max(ious)) if ious else None,
            "unpaired": alone, "unpaired_fp32": alone_ref}


@dataclass
class DetectionAccuracy:
    map50: float | None  # on the validation images; None without any
    map50_95: float | None
    drop: float | None  # mAP@.5 points below FP32 (negative: better than FP32)
    box_iou: dict[str, Any]  # box_agreement against FP32 over all labelled images
    passed: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"map50": self.map50, "map50_95": self.map50_95,
                "map50_drop_points": None if self.drop is None else round(self.drop, 2),
                "box_iou_vs_fp32": self.box_iou, "passed": self.passed, "reason": self.reason}


class DetectorGate:
    """What ``optimize`` asks of a version's task, for an object detector."""

    task = DETECTION_TASK
    outputs: tuple[str, ...] = (DENSE_BOXES, DENSE_SCORES)
    torch_paths = False  # no torch detector is rebuilt from a version's weights

    def __init__(self, data: DetectionImages) -> None:
        self.data = data
        self._val = data.val_data()
        self._reference: tuple[list[Prediction], dict[str, float]] | None = None

    @property
    def images(self) -> np.ndarray:
        return self.data.images

    @property
    def calibration_pool(self) -> np.ndarray:
        train: np.ndarray = self.data.images[~self.data.is_val]
        return train if len(train) else self.data.images

    def runner(self, session: Any) -> Runner:
        return detection_runner(session)

    def predict(self, run: Runner) -> list[Prediction]:
        return detect(run, self.data)

    def _maps(self, preds: list[Prediction]) -> dict[str, float] | None:
        if not self._val.val:
            return None
        return mean_average_precision(
            self._val, [p for p, v in zip(preds, self.data.is_val, strict=True) if v])

    def assess(self, preds: list[Prediction], reference: list[Prediction], max_drop: float,
               exact: bool = False) -> DetectionAccuracy:
        """Gate ``preds`` against FP32's (``reference``); ``max_drop`` in mAP@.5 points."""
        maps = self._maps(preds)
        if self._reference is None or self._reference[0] is not reference:
            self._reference = (reference, self._maps(reference) or {})
        ref = self._reference[1]
        agreement = box_agreement(preds, reference)
        if maps is None:
            return DetectionAccuracy(None, None, None, agreement, exact,
                                     "FP32 rewrite, checked numerically" if exact else
                                     "no labelled validation images to check mAP on")
        drop = (ref["map50"] - maps["map50"]) * 100.0
        if exact:
            reason = "FP32 rewrite, checked numerically"
        elif drop > max_drop:
            reason = (f"mAP@.5 drops {drop:.2f} points (> {max_drop:g}): {maps['map50']:.4f} "
                      f"against FP32's {ref['map50']:.4f}")
        else:
            reason = f"mAP@.5 drop {drop:.2f} <= {max_drop:g} points"
        return DetectionAccuracy(maps["map50"], maps["map50_95"], drop, agreement,
                                 exact or drop <= max_drop, reason)

    def difference(self, a: Any, b: Any) -> float:
        """Largest output difference: boxes as a share of the input side, scores as they are."""
        side = float(self.data.spec.crop)
        # A measured-only engine may return the first output alone (OpenVINO's runner does).
        a, b = (v if isinstance(v, tuple | list) else (v,) for v in (a, b))
        return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) / scale
                   for x, y, scale in zip(a, b, (side, 1.0), strict=False))

    def sensitive_nodes(self, model: onnx.ModelProto) -> dict[str, list[str]]:
        """Layers to keep in FP32, cheapest first: the convolutions that write the outputs
        (box offsets and class scores), then also the first one (raw pixels)."""
        producer = {out: node for node in model.graph.node for out in node.output}
        heads: list[str] = []
        todo, seen = [o.name for o in model.graph.output], set()
        while todo:
            node = producer.get(todo.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                heads.append(node.name)
            else:
                todo.extend(node.input)
        convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
        first = [convs[0]] if convs and convs[0] not in heads else []
        return {"heads": heads, "first+heads": [*first, *heads]}

    def settings(self) -> dict[str, Any]:
        return {"labelled_images": len(self.data.images),
                "val_images": int(self.data.is_val.sum()),
                "val_boxes": sum(len(t.get("labels", [])) for _, t in self._val.val),
                "gate": "mAP@.5 on the validation images, points (hundredths)"}

    def describe(self, result: DetectionAccuracy) -> str:
        iou = result.box_iou
        return f"mAP@.5 {result.map50} box IoU vs FP32 mean {iou['mean']} min {iou['min']}"

    def version_metrics(self, metrics: dict[str, Any], result: DetectionAccuracy
                        ) -> dict[str, Any]:
        out = {**metrics, "source_map50": metrics.get("map50"),
               "source_map50_95": metrics.get("map50_95")}
        if result.map50 is not None:
            out["map50"], out["map50_95"] = result.map50, result.map50_95
        return out
