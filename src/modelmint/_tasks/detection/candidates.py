"""Detection candidates: MobileNetV2 + FCOS (baseline with fixed parameters, and searched),
MobileNetV2 + RetinaNet, MobileNetV2 + Faster R-CNN and EfficientNet-Lite0 + FCOS (searched),
all trained on cached prefix features (:mod:`.features`) by :class:`.training.DetectorTrainer`.

The search space: input size, learning rate, epochs, how many of the backbone's tail blocks stay
frozen, the number of cached views per training image, the FPN's width and the head's depth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._data.dataset import TaskData
from ..._data.detection import letterbox
from ..contract import Trial
from .backbones import EFFICIENTNET_LITE0, MOBILENET, DetectionBackbone
from .export import export_detector
from .features import (
    MAX_VIEWS,
    PrefixEngine,
    is_cached,
    letterbox_spec,
    train_views,
    val_geometry,
    view_features,
)
from .model import HEAD_CONVS, WIDTHS, Detector
from .training import CHECKPOINT, DetectorTrainer, map50, predict

TASK = "object-detection"
INPUT_SIZES = (256, 320, 384)
# Each backbone's cost per image view at 320 x 320 (scaled by the pixel count at other sizes)
# is in :mod:`.backbones`: the prefix (decode, augment, letterbox, cached layers) and one
# training step per cached view (FPN 32 wide, FCOS head of 2 convolutions, the last tail block
# fine-tuned, loss, backward; the frozen tail blocks run once per trial, not per epoch).
# A training step's cost by head, against FCOS's (measured at 320 px, FPN 32 wide, 2 convolutions
# per branch): Faster R-CNN's region pooling and its backward dominate its step.
HEAD_COST = {"fcos": 1.0, "retinanet": 1.0, "faster_rcnn": 2.2}
MIN_EPOCHS = 2  # the least a searched trial is worth running for
# The baseline: cheap (the plain view only, the whole tail frozen, the narrowest head), at the
# searched trials' usual input size so that they reuse its feature cache.
BASELINE = {"input_size": 320, "lr": 2e-3, "epochs": 8, "frozen_blocks": MOBILENET.tail_blocks,
            "views": 1, "width": 32, "head_convs": 1}
# The searched FCOS trial that runs first: a known-good point of the space (raccoon: mAP@.5
# 0.83 after 5 epochs at width 64 and 2 blocks fine-tuned; width 32 and one block cost 1/2.5).
FIRST_FCOS = {"input_size": 320, "lr": 2e-3, "epochs": 24, "frozen_blocks": 3, "views": 3,
              "width": 32, "head_convs": 2}


def _scale(size: int) -> float:
    return (size / 320) ** 2


@dataclass
class DetectionFitted:
    architecture: str
    preprocessing: dict[str, Any]
    params: dict[str, Any]
    model: Detector
    predictions: list[dict[str, list[Any]]]
    warmup: list[bytes]
    sample: np.ndarray  # a few letterboxed val images, to check the ONNX graph against torch
    stop_reason: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def val_predictions(self) -> list[dict[str, list[Any]]]:
        return self.predictions

    def export(self, directory: Path) -> None:
        export_detector(self.model, directory, self.architecture, self.sample)

    def warmup_payloads(self) -> list[bytes]:
        return self.warmup


class DetectionCandidate:
    """One head on one backbone; ``kind="baseline"`` trains fixed parameters, ``"finetune"``
    suggests them from the trial, under parameter names prefixed with the candidate's name."""

    task = TASK

    def __init__(self, head: str, kind: str, backbone: DetectionBackbone = MOBILENET) -> None:
        self.head, self.kind, self.backbone = head, kind, backbone
        self.key = f"{backbone.name}/{head}"
        self.name = self.key + ("-baseline" if kind == "baseline" else "")

    def first_trial(self) -> dict[str, Any]:
        return {f"{self.key}.{k}": v for k, v in FIRST_FCOS.items()} if self.head == "fcos" \
            else {}

    def suggest(self, trial: Trial | None) -> dict[str, Any]:
        if self.kind == "baseline" or trial is None:
            return dict(BASELINE)
        p = f"{self.key}."
        return {
            "input_size": trial.suggest_categorical(p + "input_size", list(INPUT_SIZES)),
            "lr": trial.suggest_float(p + "lr", 3e-4, 5e-3, log=True),
            "epochs": trial.suggest_int(p + "epochs", 8, 40),
            "frozen_blocks": trial.suggest_int(p + "frozen_blocks", 0,
                                               self.backbone.tail_blocks),
            "views": trial.suggest_int(p + "views", 1, MAX_VIEWS),
            "width": trial.suggest_categorical(p + "width", list(WIDTHS)),
            "head_convs": trial.suggest_categorical(p + "head_convs", list(HEAD_CONVS)),
        }

    def estimate_seconds(self, data: TaskData) -> float:
        size = int(BASELINE["input_size"]) if self.kind == "baseline" else min(INPUT_SIZES)
        images = len(data.train) + len(data.val)
        cost = self.backbone
        prefix = 0.0 if is_cached(cost, size) else cost.prefix_seconds * _scale(size) * images
        epochs = 2 if self.kind == "baseline" else MIN_EPOCHS
        step = cost.train_seconds * HEAD_COST[self.head] * _scale(size)
        return prefix + 2.0 + epochs * step * len(data.train)

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> DetectionFitted:
        params = self.suggest(trial)
        seed = int(data.extra.get("seed", 0))
        size = int(params["input_size"])
        spec = letterbox_spec(self.backbone, size)
        torch.manual_seed(seed)
        model = Detector(len(data.labels), size, self.head, int(params["width"]),
                         int(params["head_convs"]), backbone=self.backbone.name)
        model.freeze(int(params["frozen_blocks"]))
        cache_dir = workdir.parent.parent / "cache"
        prefix = PrefixEngine(model.prefix, size)
        val = view_features(prefix, data, "val", 0, self.backbone, size, cache_dir)
        views = train_views(prefix, data, int(params["views"]), self.backbone, size, cache_dir,
                            deadline, self.backbone.prefix_seconds * _scale(size))
        # The frozen tail blocks run once per view here, not in every epoch.
        val = val.with_frozen_tail(model)
        views = [view.with_frozen_tail(model) for view in views]
        geometry = val_geometry(data, size)
        truth = [t for _, t in data.val]

        def score(m: Detector) -> float:
            return map50(truth, predict(m, val, geometry, spec), len(data.labels))

        workdir.mkdir(parents=True, exist_ok=True)
        epochs = int(params["epochs"])
        trainer = DetectorTrainer(
            model, views, val, score, lr=float(params["lr"]), epochs=epochs, seed=seed,
            workdir=workdir, params=params,
            trial=trial if self.kind != "baseline" else None,
            patience=max(4, epochs // 3), min_epochs=1 if self.kind == "baseline" else 0)
        trainer.restore()  # a retried trial continues where it stopped
        started = time.monotonic()
        result = trainer.run(deadline)
        # A finished trial is never continued: its checkpoint has served.
        (workdir / CHECKPOINT).unlink(missing_ok=True)
        predictions = predict(model, val, geometry, spec)
        sample = np.stack([letterbox(data.path(f), spec)[0] for f, _ in data.val[:4]])
        warmup = [data.path(f).read_bytes() for f, _ in data.val[:3]]
        used = {"views_used": len(views), "epochs_run": result.epochs,
                "best_epoch": result.best_epoch,
                "epoch_seconds": round((time.monotonic() - started) / max(1, len(
                    result.history)), 2) if result.history else None}
        provenance = {"backbone": {"name": self.backbone.name, "weights": self.backbone.weights,
                                   "cut": self.backbone.cut}, "head": self.head}
        return DetectionFitted(f"{self.backbone.name}+{self.head}", spec.to_json(),
                               {**params, **used},
                               model.eval(), predictions, warmup, sample, result.stop_reason,
                               provenance)


def detection_candidates() -> list[DetectionCandidate]:
    return [DetectionCandidate("fcos", "baseline"), DetectionCandidate("fcos", "finetune"),
            DetectionCandidate("retinanet", "finetune"),
            DetectionCandidate("faster_rcnn", "finetune"),
            DetectionCandidate("fcos", "finetune", EFFICIENTNET_LITE0)]
