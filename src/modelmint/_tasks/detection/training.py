"""The detector's training loop on cached features: AdamW with a cosine schedule, one validation
pass per epoch (mAP@.5 on the plain val view, reported to the trial so the pruner can stop it),
early stopping on that score, the best weights kept, and a checkpoint after every epoch in the
trial's folder (safetensors + JSON) from which a retried trial continues.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from safetensors import SafetensorError
from torch import Tensor

from ..._data.detection import Letterbox, LetterboxSpec, box_iou, select_detections
from ..._train import tensorfile
from ..contract import Trial
from .features import ViewFeatures
from .model import Detector

CHECKPOINT = "checkpoint.safetensors"
LOG_FILE = "log.jsonl"  # one JSON line per epoch
BATCH_SIZE = 16
TAIL_LR_FACTOR = 0.1  # fine-tuned backbone blocks learn 10x slower than the new layers
EVAL_BATCH = 32


@dataclass
class LoopResult:
    epochs: int
    best_epoch: int
    best_map50: float
    stop_reason: str
    history: list[dict[str, Any]] = field(default_factory=list)


def _targets(view: ViewFeatures, rows: np.ndarray) -> list[dict[str, Tensor]]:
    return [{"boxes": torch.tensor(view.boxes[i], dtype=torch.float32).reshape(-1, 4),
             "labels": torch.tensor(view.labels[i], dtype=torch.int64)} for i in rows]


def predict(model: Detector, view: ViewFeatures, geometry: list[Letterbox],
            spec: LetterboxSpec) -> list[dict[str, list[Any]]]:
    """Detections on every image of ``view``, in original image pixels."""
    model.eval()
    out: list[dict[str, list[Any]]] = []
    with torch.inference_mode():
        for start in range(0, len(view.files), EVAL_BATCH):
            head = model.from_features(*view.batch(slice(start, start + EVAL_BATCH)))
            dense_boxes, dense_scores = model.dense(head)
            boxes, scores, classes, count = select_detections(
                dense_boxes.numpy(), dense_scores.numpy(), score_threshold=spec.score_threshold,
                nms_iou=spec.nms_iou, max_detections=spec.max_detections,
                k=spec.max_detections)
            for i in range(len(count)):
                n = int(count[i])
                pixels = geometry[start + i].to_image(boxes[i, :n])
                out.append({"boxes": np.round(pixels.astype(np.float64), 2).tolist(),
                            "scores": np.round(scores[i, :n].astype(np.float64), 5).tolist(),
                            "labels": classes[i, :n].astype(int).tolist()})
    return out


def map50(truth: list[dict[str, Any]], predictions: list[dict[str, Any]], classes: int) -> float:
    """COCO-style mAP at IoU 0.5 (101-point interpolated precision, mean over the classes that
    have boxes): the per-epoch score, cheap enough to compute after every epoch."""
    aps = []
    for c in range(classes):
        gts = [np.asarray([b for b, lab in zip(t["boxes"], t["labels"], strict=True) if lab == c],
                          np.float32).reshape(-1, 4) for t in truth]
        positives = sum(len(g) for g in gts)
        if positives == 0:
            continue
        found = sorted(((s, i, b) for i, p in enumerate(predictions)
                        for b, s, lab in zip(p["boxes"], p["scores"], p["labels"], strict=True)
                        if lab == c), key=lambda d: -d[0])
        used = [np.zeros(len(g), bool) for g in gts]
        hits = np.zeros(len(found))
        for k, (_, i, box) in enumerate(found):
            if len(gts[i]) == 0:
                continue
            iou = box_iou(np.asarray([box], np.float32), gts[i])[0]
            iou[used[i]] = -1.0
            j = int(iou.argmax())
            if iou[j] >= 0.5:
                used[i][j], hits[k] = True, 1.0
        tp = np.cumsum(hits)
        recall = tp / positives
        precision = np.maximum.accumulate((tp / np.arange(1, len(found) + 1))[::-1])[::-1] \
            if len(found) else np.zeros(0)
        idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        aps.append(float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx])))
    return float(np.mean(aps)) if aps else 0.0


class DetectorTrainer:
    """Trains ``model``'s tail, FPN and head on cached train views for up to ``epochs``."""

    def __init__(self, model: Detector, train: list[ViewFeatures], val: ViewFeatures,
                 scorer: Callable[[Detector], float], *, lr: float, epochs: int, seed: int,
                 workdir: Path, params: dict[str, Any], trial: Trial | None,
                 patience: int, min_epochs: int = 0) -> None:
        self.model, self.train_views, self.val, self.scorer = model, train, val, scorer
        self.epochs, self.seed, self.workdir, self.params = epochs, seed, workdir, params
        self.trial, self.patience, self.min_epochs = trial, patience, min_epochs
        new = [p for n, p in model.named_parameters()
               if p.requires_grad and not n.startswith("tail.")]
        tail = [p for p in model.tail.parameters() if p.requires_grad]
        groups = [{"params": new, "lr": lr}]
        if tail:
            groups.append({"params": tail, "lr": lr * TAIL_LR_FACTOR})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.rows = [(v, i) for v, view in enumerate(train) for i in range(len(view.files))]
        self.epoch, self.best_epoch, self.best_map50 = 0, 0, -1.0
        self.best_state = {k: v.clone() for k, v in model.trainable_state().items()}
        self.history: list[dict[str, Any]] = []

    # -- checkpoints --------------------------------------------------------------------------
    def save(self) -> None:
        opt_tensors, opt_tree = tensorfile.flatten_state("optimizer", self.optimizer.state_dict())
        tensors = {**{f"model.{k}": v for k, v in self.model.trainable_state().items()},
                   **{f"best.{k}": v for k, v in self.best_state.items()}, **opt_tensors}
        meta = {"params": self.params, "epoch": self.epoch, "best_epoch": self.best_epoch,
                "best_map50": self.best_map50, "history": self.history, "optimizer": opt_tree}
        tensorfile.save(self.workdir / CHECKPOINT, tensors, meta)

    def restore(self) -> bool:
        """Continue from the trial folder's checkpoint, when it is this trial's."""
        path = self.workdir / CHECKPOINT
        if not path.exists():
            return False
        try:
            tensors, meta = tensorfile.load(path)
            if meta.get("params") != json.loads(json.dumps(self.params)):
                return False
            model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            self.model.load_state_dict(model_state, strict=False)
            self.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
            self.optimizer.load_state_dict(tensorfile.unflatten_state(meta["optimizer"],
                                                                      tensors))
        except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError, OSError):
            return False  # another release's checkpoint, or a damaged one: start afresh
        self.epoch, self.best_epoch = int(meta["epoch"]), int(meta["best_epoch"])
        self.best_map50, self.history = float(meta["best_map50"]), list(meta["history"])
        return True

    # -- training ----------------------------------------------------------------------------
    def _set_lr(self) -> None:
        factor = 0.5 * (1 + math.cos(math.pi * self.epoch / max(1, self.epochs)))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * max(factor, 0.02)

    def _epoch(self, deadline: float) -> bool:
        """One pass over every cached train view; False when the deadline cut it short."""
        self.model.train()
        self._set_lr()
        order = np.random.default_rng(self.seed * 7919 + self.epoch).permutation(len(self.rows))
        for start in range(0, len(order), BATCH_SIZE):
            if time.monotonic() > deadline:
                return False
            by_view: dict[int, list[int]] = {}
            for r in order[start:start + BATCH_SIZE]:
                v, i = self.rows[int(r)]
                by_view.setdefault(v, []).append(i)
            self.optimizer.zero_grad(set_to_none=True)
            total = sum(len(rows) for rows in by_view.values())
            for v, rows in by_view.items():
                view, idx = self.train_views[v], np.asarray(rows)
                head = self.model.from_features(*view.batch(idx))
                loss = self.model.loss(head, _targets(view, idx)) * (len(rows) / total)
                loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], 10.0)
            self.optimizer.step()
        return True

    def run(self, deadline: float) -> LoopResult:
        reason = "completed"
        log = self.workdir / LOG_FILE
        while self.epoch < self.epochs:
            started = time.monotonic()
            # The first ``min_epochs`` run even past the deadline: an untrained head is no model.
            if not self._epoch(deadline if self.epoch >= self.min_epochs else math.inf):
                reason = "time budget reached"
                break
            self.epoch += 1
            score = self.scorer(self.model)
            if score > self.best_map50:
                self.best_map50, self.best_epoch = score, self.epoch
                self.best_state = {k: v.clone() for k, v in self.model.trainable_state().items()}
            record = {"stage": "train", "epoch": self.epoch, "val_map50": round(score, 4),
                      "seconds": round(time.monotonic() - started, 2)}
            self.history.append(record)
            self.save()  # before the log: an interrupt between them repeats no epoch
            with log.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            if self.trial is not None:
                self.trial.report(score, self.epoch)
                if self.trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {self.epoch} (val mAP@.5 "
                                             f"{score:.3f} below the median)")
            if self.epoch - self.best_epoch >= self.patience:
                reason = f"early stop: no better val mAP@.5 for {self.patience} epochs"
                break
        if self.best_map50 >= 0:
            self.model.load_state_dict(self.best_state, strict=False)
        return LoopResult(self.epoch, self.best_epoch, max(self.best_map50, 0.0), reason,
                          self.history)
