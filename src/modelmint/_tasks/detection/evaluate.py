"""Object detection scored the COCO way (pycocotools' ``COCOeval``, built in memory), plus what
the report draws: per-class AP and precision-recall curves, and every validation image's misses
and false positives, worst images first, the worst few with an embedded JPEG thumbnail.

A prediction is ``{"boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]}`` per
validation image, in the original image's pixels; the ground truth is ``data.val``'s target.
pycocotools is imported when an evaluation is made, not with this module.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._data.dataset import TaskData
from ..._data.detection import box_iou
from ...errors import InvalidInput

if TYPE_CHECKING:
    from rich.console import Console

CONFIDENT = 0.5  # a detection at or above this score counts as made, for misses and FPs
MATCH_IOU = 0.5  # a confident detection this close to a box of its class found it
THUMBNAILS = 24  # images drawn in the report, worst first
THUMBNAIL_SIDE = 240  # pixels, the longer side of a drawn image
THUMBNAIL_QUALITY = 80
COCO_AREA_ALL = 0  # index of COCOeval's "all" area range
IOU_50, IOU_75 = 0, 5  # indices of IoU .5 and .75 in COCOeval's ten thresholds


def _checked(predictions: Sequence[dict[str, Any]], count: int) -> list[dict[str, np.ndarray]]:
    """Predictions as arrays, refusing a list that does not line up with the images."""
    if len(predictions) != count:
        raise InvalidInput(f"detection predictions: {len(predictions)} entries for {count} "
                           "validation images; expected one per image, in order")
    out = []
    for i, p in enumerate(predictions):
        try:
            boxes = np.asarray(p["boxes"], np.float64).reshape(-1, 4)
            scores = np.asarray(p["scores"], np.float64).reshape(-1)
            labels = np.asarray(p["labels"], np.int64).reshape(-1)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"detection predictions[{i}]: {exc!r}; expected 'boxes' "
                               "[[x1, y1, x2, y2], ...], 'scores' [...] and 'labels' [...]"
                               ) from None
        if not len(boxes) == len(scores) == len(labels):
            raise InvalidInput(f"detection predictions[{i}]: {len(boxes)} boxes, "
                               f"{len(scores)} scores, {len(labels)} labels; expected as many "
                               "of each")
        out.append({"boxes": boxes, "scores": scores, "labels": labels})
    return out


def _truth(target: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(target.get("boxes", []), np.float64).reshape(-1, 4)
    return boxes, np.asarray(target.get("labels", []), np.int64).reshape(-1)


def _xywh(box: np.ndarray) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def coco_precision(data: TaskData, preds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """COCOeval's precision array ``[iou thresholds, recall points, classes]`` (area "all",
    the most detections), ``-1`` for a class with no ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": k + 1, "name": name} for k, name in enumerate(data.labels)]
    images: list[dict[str, Any]] = []
    truths: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for i, ((_, target), pred) in enumerate(zip(data.val, preds, strict=True)):
        images.append({"id": i + 1, "width": target.get("width", 0),
                       "height": target.get("height", 0)})
        for box, label in zip(*_truth(target), strict=True):
            xywh = _xywh(box)
            truths.append({"id": len(truths) + 1, "image_id": i + 1,
                           "category_id": int(label) + 1, "bbox": xywh,
                           "area": xywh[2] * xywh[3], "iscrowd": 0})
        for box, score, label in zip(pred["boxes"], pred["scores"], pred["labels"],
                                     strict=True):
            xywh = _xywh(box)
            dets.append({"id": len(dets) + 1, "image_id": i + 1,
                         "category_id": int(label) + 1, "bbox": xywh, "score": float(score),
                         "area": xywh[2] * xywh[3], "iscrowd": 0})
    # COCO's loadRes cannot take zero detections; both sides are built the same way instead.
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "annotations": truths, "categories": categories}
        dt.dataset = {"images": images, "annotations": dets, "categories": categories}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.catIds = [c["id"] for c in categories]
        ev.params.imgIds = [im["id"] for im in images]
        most = max([100, *(len(p["scores"]) for p in preds)])
        ev.params.maxDets = [1, 10, most]
        ev.evaluate()
        ev.accumulate()
    precision: np.ndarray = ev.eval["precision"][:, :, :, COCO_AREA_ALL, -1]
    return precision


def _ap(curve: np.ndarray) -> float | None:
    """The mean of interpolated precision over the recall points; None without ground truth."""
    valid = curve[curve > -1]
    return float(valid.mean()) if valid.size else None


def _mean(values: list[float | None]) -> float:
    """Over the classes that have ground truth (COCO's mean); 0 when none has."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else 0.0


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def match_image(truth_boxes: np.ndarray, truth_labels: np.ndarray, pred: dict[str, np.ndarray],
                labels: list[str]) -> dict[str, Any]:
    """One image's confident detections matched greedily (best score first) to the unmatched
    ground-truth box of their class with the highest IoU at least :data:`MATCH_IOU`."""
    keep = pred["scores"] >= CONFIDENT
    boxes, scores, classes = pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep]
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes, truth_boxes) if len(boxes) and len(truth_boxes) else np.zeros(
        (len(boxes), len(truth_boxes)), np.float32)
    taken = np.zeros(len(truth_boxes), bool)
    hits, false_positives = [], []

    def name(k: int) -> str:
        return labels[k] if 0 <= k < len(labels) else str(k)

    for d in order:
        same = (truth_labels == classes[d]) & ~taken & (iou[d] >= MATCH_IOU)
        entry = {"box": [round(float(v), 1) for v in boxes[d]], "label": name(int(classes[d])),
                 "score": round(float(scores[d]), 3)}
        if same.any():
            g = int(np.argmax(np.where(same, iou[d], -1.0)))
            taken[g] = True
            hits.append({**entry, "iou": round(float(iou[d, g]), 3)})
        else:
            false_positives.append(entry)
    truth = [{"box": [round(float(v), 1) for v in b], "label": name(int(k)), "found": bool(f)}
             for b, k, f in zip(truth_boxes, truth_labels, taken, strict=True)]
    return {"ground_truth": truth, "true_positives": hits,
            "misses": [{"box": t["box"], "label": t["label"]} for t in truth if not t["found"]],
            "false_positives": false_positives}


def thumbnail(path: Any, width: int, height: int) -> dict[str, Any] | None:
    """A small JPEG of the upright image (base64) and the scale from its pixels to the
    thumbnail's; None when the file cannot be read any more."""
    from PIL import Image

    from ..._data.preprocess import open_image

    try:
        picture = open_image(path)
    except (OSError, InvalidInput):
        return None
    side = max(picture.size)
    scale = min(1.0, THUMBNAIL_SIDE / side) if side else 1.0
    size = (max(1, round(picture.size[0] * scale)), max(1, round(picture.size[1] * scale)))
    small = picture.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    # Boxes are in the annotated size; the decoded one should equal it, but scale by width.
    box_scale = size[0] / (width or picture.size[0])
    return {"jpeg_base64": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "width": size[0], "height": size[1], "scale": round(box_scale, 6)}


def _severity(image: dict[str, Any]) -> tuple[int, float, str]:
    worst_fp = max((f["score"] for f in image["false_positives"]), default=0.0)
    return (-(len(image["misses"]) + len(image["false_positives"])), -worst_fp, image["file"])


def _precision(data: TaskData, preds: list[dict[str, np.ndarray]]) -> np.ndarray:
    if data.val and data.labels:
        return coco_precision(data, preds)
    return np.full((10, 101, len(data.labels)), -1.0)


def _class_aps(precision: np.ndarray, c: int) -> tuple[float | None, float | None, float | None]:
    """(AP@.5, AP@.75, AP@[.5:.95]) of class ``c``; None for a class with no ground truth."""
    ap50, ap75 = _ap(precision[IOU_50, :, c]), _ap(precision[IOU_75, :, c])
    per_threshold = [_ap(precision[t, :, c]) for t in range(precision.shape[0])]
    return ap50, ap75, None if ap50 is None else _mean(per_threshold)


def mean_average_precision(data: TaskData, predictions: Sequence[dict[str, Any]]
                           ) -> dict[str, float]:
    """Only the means (``map50_95``, ``map50``, ``map75``): what a gate compares."""
    preds = _checked(predictions, len(data.val))
    precision = _precision(data, preds)
    aps = [_class_aps(precision, c) for c in range(len(data.labels))]
    return {"map50_95": round(_mean([a[2] for a in aps]), 4),
            "map50": round(_mean([a[0] for a in aps]), 4),
            "map75": round(_mean([a[1] for a in aps]), 4)}


def evaluate(data: TaskData, predictions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """mAP@[.5:.95], mAP@.5 and @.75, per-class AP, PR curves at IoU .5, and the images with
    their misses and false positives, worst first (see the module docstring)."""
    preds = _checked(predictions, len(data.val))
    precision = _precision(data, preds)
    recall_points = np.linspace(0.0, 1.0, precision.shape[1])
    per_class: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    ap50s, ap75s, aps = [], [], []
    truths = [_truth(target) for _, target in data.val]
    for c, name in enumerate(data.labels):
        ap50, ap75, ap = _class_aps(precision, c)
        ap50s.append(ap50)
        ap75s.append(ap75)
        aps.append(ap)
        per_class[name] = {
            "ap50": _r(ap50), "ap50_95": _r(ap),
            "boxes": int(sum(int((labels == c).sum()) for _, labels in truths)),
            "detections": int(sum(int((p["labels"] == c).sum()) for p in preds))}
        curves[name] = ({"recall": [], "precision": [], "average_precision": 0.0}
                        if ap50 is None else
                        {"recall": [round(float(r), 4) for r in recall_points],
                         "precision": [round(float(p), 4) for p in precision[IOU_50, :, c]],
                         "average_precision": round(ap50, 4)})
    images = []
    for (file, target), (boxes, labels), pred in zip(data.val, truths, preds, strict=True):
        images.append({"file": file, "width": int(target.get("width", 0)),
                       "height": int(target.get("height", 0)),
                       **match_image(boxes, labels, pred, data.labels)})
    images.sort(key=_severity)
    for image in images[:THUMBNAILS]:
        image["thumbnail"] = thumbnail(data.path(image["file"]), image["width"],
                                       image["height"])
    return {
        "map50_95": round(_mean(aps), 4), "map50": round(_mean(ap50s), 4),
        "map75": round(_mean(ap75s), 4),
        "per_class": per_class, "pr_curves": curves,
        "samples": len(data.val), "boxes": int(sum(len(labels) for _, labels in truths)),
        "confident_score": CONFIDENT, "match_iou": MATCH_IOU,
        "misses": sum(len(i["misses"]) for i in images),
        "false_positives": sum(len(i["false_positives"]) for i in images),
        "images": images,
    }


def version_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    """What ``modelmint.json`` records of a detector's evaluation."""
    return {"map50": round(float(evaluation["map50"]), 4),
            "map50_95": round(float(evaluation["map50_95"]), 4),
            "val_images": int(evaluation["samples"]), "val_boxes": int(evaluation["boxes"])}


def print_report(evaluation: dict[str, Any], console: Console, max_images: int = 8) -> None:
    """The evaluation for the terminal: mAP, per-class AP, and the worst images."""
    from rich.table import Table

    table = Table(title=f"Validation: mAP@.5 {evaluation['map50']:.3f}, mAP@[.5:.95] "
                        f"{evaluation['map50_95']:.3f}, mAP@.75 {evaluation['map75']:.3f} on "
                        f"{evaluation['samples']} images, {evaluation['boxes']} boxes")
    for col in ("class", "AP@.5", "AP@[.5:.95]", "boxes", "detections"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for label, m in evaluation["per_class"].items():
        table.add_row(label, "-" if m["ap50"] is None else f"{m['ap50']:.3f}",
                      "-" if m["ap50_95"] is None else f"{m['ap50_95']:.3f}", str(m["boxes"]),
                      str(m["detections"]))
    console.print(table)
    bad = [i for i in evaluation["images"] if i["misses"] or i["false_positives"]]
    if bad:
        console.print(f"{evaluation['misses']} missed boxes and {evaluation['false_positives']} "
                      f"false positives (score >= {evaluation['confident_score']:g}, IoU >= "
                      f"{evaluation['match_iou']:g}) in {len(bad)} images; the worst:")
        for image in bad[:max_images]:
            console.print(f"  {image['file']}: {len(image['misses'])} missed, "
                          f"{len(image['false_positives'])} false positive")
