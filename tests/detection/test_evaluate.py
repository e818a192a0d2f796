"""Detection scoring (COCO mAP through pycocotools), the per-image misses and false positives,
and the report's sections: checked against hand computations and generated shapes."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from defusedxml.ElementTree import parse
from rich.console import Console

from modelmint._data.dataset import TaskData
from modelmint._tasks.detection.evaluate import (
    THUMBNAILS,
    evaluate,
    mean_average_precision,
    print_report,
    version_metrics,
)
from modelmint._tasks.detection.report import report_html
from modelmint.errors import InvalidInput

from .shapes import CLASSES, make_shapes

Target = dict[str, Any]


def _target(boxes: list[list[float]], labels: list[int], width: int = 200,
            height: int = 200) -> Target:
    return {"boxes": boxes, "labels": labels, "width": width, "height": height}


def _data(targets: list[Target], labels: list[str] | None = None,
          root: Path = Path("/nonexistent")) -> TaskData:
    return TaskData(task="object-detection", root=root, labels=labels or ["a", "b"], train=[],
                    val=[(f"img-{i}.jpg", t) for i, t in enumerate(targets)], split_note="test")


def _pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, Any]:
    return {"boxes": boxes, "scores": scores, "labels": labels}


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> TaskData:
    root = make_shapes(tmp_path_factory.mktemp("shapes"), images=8, seed=3)
    val = []
    for xml in sorted((root / "annotations").glob("*.xml")):
        tree = parse(str(xml)).getroot()
        boxes, labels = [], []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            boxes.append([float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(CLASSES.index(obj.findtext("name")))
        val.append((f"images/{tree.findtext('filename')}",
                    _target(boxes, labels, int(tree.findtext("size/width")),
                            int(tree.findtext("size/height")))))
    return TaskData(task="object-detection", root=root, labels=list(CLASSES), train=[],
                    val=val, split_note="test")


def _perfect(data: TaskData) -> list[dict[str, Any]]:
    return [_pred(t["boxes"], [0.9] * len(t["labels"]), t["labels"]) for _, t in data.val]


def test_perfect_predictions_score_one(shapes_data: TaskData) -> None:
    ev = evaluate(shapes_data, _perfect(shapes_data))
    assert ev["map50_95"] == ev["map50"] == ev["map75"] == 1.0
    assert mean_average_precision(shapes_data, _perfect(shapes_data)) == {
        "map50_95": 1.0, "map50": 1.0, "map75": 1.0}
    json.dumps(ev)  # report.json holds it as is
    assert ev["misses"] == ev["false_positives"] == 0
    assert ev["boxes"] == sum(len(t["labels"]) for _, t in shapes_data.val)
    assert ev["samples"] == len(shapes_data.val) == 8
    for name, m in ev["per_class"].items():
        if m["boxes"]:
            assert m["ap50"] == m["ap50_95"] == 1.0 and m["detections"] == m["boxes"]
            assert ev["pr_curves"][name]["average_precision"] == 1.0
            assert len(ev["pr_curves"][name]["recall"]) == len(
                ev["pr_curves"][name]["precision"]) == 101


def test_shifted_boxes_score_lower(shapes_data: TaskData) -> None:
    shifted = [_pred([[x1 + 4, y1 + 4, x2 + 4, y2 + 4] for x1, y1, x2, y2 in t["boxes"]],
                     [0.9] * len(t["labels"]), t["labels"]) for _, t in shapes_data.val]
    ev = evaluate(shapes_data, shifted)
    assert 0.0 < ev["map50_95"] < 1.0
    assert ev["map50_95"] < ev["map50"]


def test_one_box_at_iou_062_by_hand() -> None:
    # gt 100x100, detection 100x62 inside it: IoU 0.62, so it matches at the thresholds
    # .50, .55 and .60 and at none of the seven above: AP50 1, AP75 0, AP[.5:.95] 3/10.
    data = _data([_target([[0, 0, 100, 100]], [0])])
    ev = evaluate(data, [_pred([[0, 0, 100, 62]], [0.8], [0])])
    assert ev["map50"] == 1.0 and ev["map75"] == 0.0
    assert ev["map50_95"] == pytest.approx(0.3)
    assert ev["per_class"]["a"] == {"ap50": 1.0, "ap50_95": 0.3, "boxes": 1, "detections": 1}
    assert ev["per_class"]["b"]["ap50"] is None  # no ground truth: no AP, not in the mean


def test_a_false_positive_ranked_between_two_hits_by_hand() -> None:
    # Ranked detections: hit (P 1, R .5), false positive, hit (P 2/3, R 1). COCO's 101-point
    # interpolated precision is 1 at recall 0..0.50 (51 points) and 2/3 at .51..1 (50 points).
    data = _data([_target([[0, 0, 50, 50], [100, 100, 150, 150]], [1, 1])])
    ev = evaluate(data, [_pred([[0, 0, 50, 50], [60, 0, 90, 40], [100, 100, 150, 150]],
                               [0.9, 0.8, 0.7], [1, 1, 1])])
    assert ev["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-4)
    assert ev["per_class"]["b"]["detections"] == 3
    image = ev["images"][0]
    assert [f["score"] for f in image["false_positives"]] == [0.8]
    assert image["misses"] == [] and len(image["true_positives"]) == 2


def test_wrong_class_is_a_miss_and_a_false_positive() -> None:
    data = _data([_target([[0, 0, 50, 50]], [0])])
    ev = evaluate(data, [_pred([[0, 0, 50, 50]], [0.95], [1])])
    assert ev["map50"] == 0.0
    image = ev["images"][0]
    assert image["misses"] == [{"box": [0.0, 0.0, 50.0, 50.0], "label": "a"}]
    assert image["false_positives"][0]["label"] == "b"


def test_low_scores_are_neither_misses_nor_false_positives_but_count_in_ap() -> None:
    data = _data([_target([[0, 0, 50, 50]], [0]), _target([], [])])
    ev = evaluate(data, [_pred([[0, 0, 50, 50]], [0.3], [0]),
                         _pred([[10, 10, 40, 40]], [0.2], [0])])
    assert ev["map50"] == 1.0  # the hit outranks the false positive
    assert ev["images"][0]["misses"] and not ev["false_positives"]


def test_negatives_and_worst_images_first() -> None:
    data = _data([_target([[0, 0, 50, 50]], [0]), _target([], []), _target([], []),
                  _target([[10, 10, 60, 60], [100, 100, 160, 160]], [0, 0])])
    preds = [_pred([[0, 0, 50, 50]], [0.9], [0]), _pred([], [], []),
             _pred([[5, 5, 30, 30]], [0.7], [0]), _pred([], [], [])]
    ev = evaluate(data, preds)
    assert [i["file"] for i in ev["images"]] == ["img-3.jpg", "img-2.jpg", "img-0.jpg",
                                                 "img-1.jpg"]
    assert ev["misses"] == 2 and ev["false_positives"] == 1
    assert 0.0 < ev["map50"] < 1.0
    assert ev["boxes"] == 3 and ev["samples"] == 4


def test_empty_predictions_score_zero() -> None:
    data = _data([_target([[0, 0, 50, 50]], [0]), _target([], [])])
    ev = evaluate(data, [_pred([], [], []), _pred([], [], [])])
    assert ev["map50_95"] == ev["map50"] == 0.0
    assert ev["pr_curves"]["a"]["average_precision"] == 0.0
    assert ev["pr_curves"]["b"] == {"recall": [], "precision": [], "average_precision": 0.0}
    assert ev["misses"] == 1
    only_negatives = evaluate(_data([_target([], [])]), [_pred([], [], [])])
    assert only_negatives["map50"] == 0.0 and only_negatives["boxes"] == 0
    assert evaluate(_data([]), [])["map50_95"] == 0.0


def test_predictions_that_do_not_line_up_are_refused() -> None:
    data = _data([_target([[0, 0, 50, 50]], [0])])
    with pytest.raises(InvalidInput, match="1 validation images"):
        evaluate(data, [])
    with pytest.raises(InvalidInput, match=r"predictions\[0\]: 1 boxes, 2 scores"):
        evaluate(data, [_pred([[0, 0, 5, 5]], [0.5, 0.4], [0])])
    with pytest.raises(InvalidInput, match=r"predictions\[0\]"):
        evaluate(data, [{"boxes": [[0, 0, 5, 5]]}])


def test_version_metrics_are_rounded() -> None:
    ev = {"map50": 0.123456, "map50_95": 0.0654321, "samples": 7, "boxes": 12}
    assert version_metrics(ev) == {"map50": 0.1235, "map50_95": 0.0654, "val_images": 7,
                                   "val_boxes": 12}


def test_report_draws_the_worst_images_self_contained(shapes_data: TaskData) -> None:
    labels = ["<b>circle</b>", *CLASSES[1:]]
    data = TaskData(task=shapes_data.task, root=shapes_data.root, labels=labels, train=[],
                    val=shapes_data.val, split_note="test")
    preds = _perfect(data)
    worst = len(data.val) - 1
    _, _, x2, y2 = data.val[worst][1]["boxes"][0]
    preds[worst] = _pred([[x2 + 5, y2 + 5, x2 + 25, y2 + 25], *preds[worst]["boxes"][1:]],
                         preds[worst]["scores"], preds[worst]["labels"])
    ev = evaluate(data, preds)
    assert ev["images"][0]["file"] == data.val[worst][0]  # worst first
    assert len(ev["images"][0]["misses"]) == len(ev["images"][0]["false_positives"]) == 1
    assert all(i["thumbnail"] for i in ev["images"][:THUMBNAILS])
    assert max(ev["images"][0]["thumbnail"]["width"], ev["images"][0]["thumbnail"]["height"]) \
        == 240
    page = report_html({"evaluation": ev})
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page, re.I)
    assert "<script" not in page
    assert page.count("data:image/jpeg;base64,") == len(data.val)

    def rects(colour: str) -> int:
        return len(re.findall(f'<rect [^>]*stroke="{colour}"', page))

    assert rects("#d62728") == 1  # the one false positive, red
    assert page.count("stroke-dasharray") == 1  # the one miss, dashed
    assert rects("#1f77b4") == sum(len(i["true_positives"]) for i in ev["images"])  # blue
    assert rects("#2ca02c") == ev["boxes"]  # every ground-truth box, green
    assert "<b>circle" not in page and "&lt;b&gt;circle&lt;/b&gt;" in page
    assert "mAP@.5" in page and "<polyline" in page

    out = io.StringIO()
    print_report(ev, Console(file=out, width=120))
    text = out.getvalue()
    assert "mAP@.5" in text and "1 missed boxes and 1 false positives" in text
    assert data.val[worst][0] in text
