"""Object detection: images with boxes (Pascal VOC, COCO or YOLO annotations); transfer learning
from MobileNetV2 or EfficientNet-Lite0 with torchvision detection heads (FCOS, RetinaNet) on
cached backbone features, exported as one ONNX graph returning dense boxes and per-class
scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..._data.dataset import TaskData
from ..._data.detection import LetterboxSpec
from ..._data.detection_data import detection_evidence, load_detection_data
from ..._repository import TensorSpec
from ..._repository.metadata import detection_signature
from ..contract import Candidate, Fitted, LoadOptions, Task

NAME = "object-detection"
METRIC = "map50"
# Importing the candidates (and the evaluation, which uses pycocotools) costs seconds: only
# training and scoring pay it, not detecting which task a folder holds.


def _load(path: Path, options: LoadOptions) -> TaskData:
    data = load_detection_data(path, seed=options.seed, group_by=options.group_by,
                               strict=options.strict)
    data.extra.setdefault("seed", options.seed)
    return data


def _candidates() -> list[Candidate]:
    from .candidates import detection_candidates

    return list(detection_candidates())


def _fixed_plan(epochs: int) -> tuple[str, dict[str, Any]]:
    from .candidates import FIRST_FCOS

    name = "mobilenet_v2/fcos"
    return name, {f"{name}.{k}": v for k, v in {**FIRST_FCOS, "epochs": epochs}.items()}


def _evaluate(data: TaskData, predictions: Any) -> dict[str, Any]:
    from .evaluate import evaluate

    return evaluate(data, predictions)


def _report_html(report: dict[str, Any]) -> str:
    from .report import report_html

    return report_html(report)


def _print_report(report: dict[str, Any], console: Console) -> None:
    from .evaluate import print_report

    print_report(report, console)


def _version_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    from .evaluate import version_metrics

    return version_metrics(evaluation)


def _signature(data: TaskData, fitted: Fitted) -> tuple[list[TensorSpec], list[TensorSpec]]:
    spec = LetterboxSpec.from_json(fitted.preprocessing)
    assert isinstance(spec, LetterboxSpec)
    return detection_signature(spec)


TASK = Task(
    name=NAME,
    describe="images with boxes: images/ + annotations/ (Pascal VOC XML), a COCO JSON or "
             "YOLO labels",
    detect=detection_evidence, load=_load, candidates=_candidates, metric=METRIC,
    evaluate=_evaluate, report_html=_report_html, print_report=_print_report,
    version_metrics=_version_metrics, signature=_signature, fixed_plan=_fixed_plan,
    options=frozenset({"group_by"}))
