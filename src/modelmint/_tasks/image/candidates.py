"""Image candidates: frozen-backbone + linear head (baseline) and fine-tuning, for MobileNetV2
and EfficientNet-Lite0.

Every candidate reuses the cached transfer learning of :mod:`modelmint._train.cache` and
:mod:`modelmint._train.loop`: the frozen prefix of a backbone runs once per image view and its
activations are cached on disk in the run directory (``cache/<backbone>-<size>.pt``), so a
trial only pays for the tail blocks it fine-tunes. "Blocks to unfreeze" therefore counts from
the end of the tail; the blocks of the tail left frozen are still computed each epoch (cheap at
7x7).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from PIL import Image
from rich.console import Console
from safetensors import SafetensorError
from torch import nn

from ..._data.dataset import TaskData
from ..._data.images import CROP_SPEC
from ..._data.preprocess import ImageSpec, open_image, resize_and_crop, to_tensor
from ..._profile.commands import finish_run, tracer_for_run
from ..._train.backbone import Classifier
from ..._train.cache import ActivationCache, build_cache
from ..._train.export import check_onnx, export_onnx
from ..._train.loop import CHECKPOINT, Hyper, LoopState, Trainer
from ..contract import Trial
from .backbones import IMAGE_BACKBONES, ImageBackbone

TASK = "image-classification"  # the name the task module registers
VIEWS = ["center", "hflip"]
LOG_FILE = "log.jsonl"  # one JSON line per epoch
# Seconds per training image per fine-tuning epoch on 2 CPU cores (measured, tail of 5 blocks).
FINETUNE_SECONDS_PER_IMAGE = {"mobilenet_v2": 0.012, "tf_efficientnet_lite0": 0.016}
PREFIX_SECONDS_PER_IMAGE = {"mobilenet_v2": 0.02, "tf_efficientnet_lite0": 0.025}

INPUT_SIZES = (192, 224)  # 192: ~0.73x the pixels, so ~0.73x the cost of every epoch

_caches: dict[tuple[str, str, int], ActivationCache] = {}  # (run dir, backbone, size) -> cache


def spec_for(backbone: ImageBackbone, size: int) -> ImageSpec:
    """The backbone's preprocessing at another input size (same resize/crop ratio)."""
    if size == backbone.spec.crop:
        return backbone.spec
    return replace(backbone.spec, resize=round(size * backbone.spec.resize / backbone.spec.crop),
                   crop=size)


def _crop(data: TaskData, item: str, spec: ImageSpec = CROP_SPEC) -> Image.Image:
    """The resized, centre-cropped image: the data check's crop at 224 (both backbones resize
    256 → crop 224), else decoded again with ``spec`` so training sees what serving will."""
    key = "crops" if (spec.resize, spec.crop) == (CROP_SPEC.resize, CROP_SPEC.crop) else \
        f"crops-{spec.resize}-{spec.crop}"
    crops: dict[str, Image.Image] = data.extra.setdefault(key, {})
    if item not in crops:  # e.g. a --reject-dir file (absolute path), not in the data check
        crops[item] = resize_and_crop(open_image(data.path(item), spec), spec)
    return crops[item]


def activation_cache(backbone: ImageBackbone, model: Classifier, data: TaskData,
                     cache_dir: Path, deadline: float | None = None,
                     size: int = 224) -> ActivationCache:
    """The prefix activations of every item for this backbone: memory, then disk, then built.

    Under a tight deadline ``build_cache`` keeps a stratified subset of the training
    images (and may drop the mirrored view); later trials reuse that subset."""
    key = (str(cache_dir), backbone.name, size)
    if key in _caches:
        return _caches[key]
    spec = spec_for(backbone, size)
    path = cache_dir / f"{backbone.name}-{size}.pt"
    train_ids = {f for f, _ in data.train}
    cache = ActivationCache.load(path) if path.exists() else None
    if cache is None or cache.val_files != [f for f, _ in data.val] or \
            not set(cache.train_files) <= train_ids:
        crops = {item: _crop(data, item, spec) for item, _ in data.train + data.val}
        cache = build_cache(model.prefix, crops, data.train, data.val, spec, VIEWS,
                            deadline)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache.save(path)
    _caches[key] = cache
    return cache


def _with_views(cache: ActivationCache, views: int) -> ActivationCache:
    """The cache restricted to its first ``views`` views (1: no augmentation)."""
    n = len(cache.train_files)
    keep = min(views, len(cache.views))
    views_kept = cache.views[:keep]
    return ActivationCache(cache.train_x[: n * keep], cache.train_y[: n * keep], cache.val_x,
                           cache.val_y, cache.train_files, cache.val_files, views_kept)


class _TrialReporter:
    """The Trainer's reporter: every epoch goes to the trial's ``log.jsonl`` (the run's progress
    and its curves); fine-tuning epochs also go to the study, whose pruner may stop the trial."""

    def __init__(self, trial: Trial | None, log: Path) -> None:
        self.trial, self.log = trial, log

    def stage(self, name: str, total_epochs: int) -> None:
        pass  # epochs say their stage

    def epoch(self, record: dict[str, Any], seconds_left: float | None) -> None:
        with self.log.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trial is None or record["stage"] != "finetune":
            return
        self.trial.report(float(record["val_accuracy"]), int(record["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after fine-tuning epoch {record['epoch']} "
                f"(val accuracy {record['val_accuracy']:.3f} below the median)")


@dataclass
class ImageFitted:
    architecture: str
    preprocessing: dict[str, Any]
    params: dict[str, Any]
    model: nn.Module  # a Classifier when trained here; any image classifier when published
    probabilities: np.ndarray
    warmup: list[bytes]
    sample: np.ndarray  # a few preprocessed val images, to check the ONNX graph against torch
    stop_reason: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)  # recorded in modelmint.json

    def val_predictions(self) -> np.ndarray:
        return self.probabilities

    def export(self, directory: Path) -> None:
        from safetensors.torch import save_file

        from ..._repository import ONNX_FILE, WEIGHTS_FILE

        model = self.model.eval()
        onnx_path = export_onnx(model, directory / ONNX_FILE, int(self.preprocessing["crop"]))
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE),
                  metadata={"architecture": self.architecture})
        check_onnx(onnx_path, model, self.sample)

    def warmup_payloads(self) -> list[bytes]:
        return self.warmup


class ImageCandidate:
    """``kind="baseline"``: frozen backbone + linear head, fixed parameters.
    ``kind="finetune"``: head first, then the last ``unfreeze`` tail blocks, searched."""

    task = TASK

    def __init__(self, backbone: ImageBackbone, kind: str) -> None:
        self.backbone, self.kind = backbone, kind
        self.name = f"{backbone.name}/{'frozen+linear' if kind == 'baseline' else 'finetune'}"

    def estimate_seconds(self, data: TaskData) -> float:
        n = len(data.train) + len(data.val)
        prefix = 0.0 if any(k[1] == self.backbone.name for k in _caches) else \
            PREFIX_SECONDS_PER_IMAGE[self.backbone.name] * (n + len(data.train))
        if self.kind == "baseline":
            return prefix + 3.0
        # The least a fine-tune trial is worth running for: two epochs of both views.
        return prefix + 3.0 + 2 * 2 * len(data.train) * FINETUNE_SECONDS_PER_IMAGE[
            self.backbone.name]

    def suggest(self, trial: Trial | None) -> dict[str, Any]:
        if self.kind == "baseline" or trial is None:
            return {"views": len(VIEWS), "head_lr": 1e-3, "batch_size": 32, "input_size": 224}
        p = f"{self.backbone.name}."
        return {
            "finetune_lr": trial.suggest_float(p + "finetune_lr", 1e-5, 3e-4, log=True),
            "batch_size": trial.suggest_categorical(p + "batch_size", [16, 32]),
            "epochs": trial.suggest_int(p + "epochs", 2, 8),
            "unfreeze": trial.suggest_int(p + "unfreeze", 1, len(self.backbone.tail_units)),
            "views": trial.suggest_categorical(p + "augmentation_views", [1, 2]),
            "input_size": trial.suggest_categorical(p + "input_size", list(INPUT_SIZES)),
        }

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> ImageFitted:
        params = self.suggest(trial)
        seed = int(data.extra.get("seed", 0))
        torch.manual_seed(seed)
        model = self.backbone.build(len(data.labels))
        size = int(params["input_size"])
        spec = spec_for(self.backbone, size)
        until = None if math.isinf(deadline) else deadline
        cache = activation_cache(self.backbone, model, data, workdir.parent.parent / "cache",
                                 until, size)
        cache = _with_views(cache, params["views"])
        if self.kind == "baseline":
            hyper = Hyper(batch_size=params["batch_size"], head_lr=params["head_lr"],
                          finetune_max_epochs=0)
        else:
            hyper = Hyper(batch_size=params["batch_size"], finetune_lr=params["finetune_lr"],
                          finetune_max_epochs=params["epochs"],
                          finetune_patience=params["epochs"])
            frozen = len(self.backbone.tail_units) - params["unfreeze"]
            for unit in list(model.tail.children())[:frozen]:
                unit.requires_grad_(False)
        workdir.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(model, cache, hyper, workdir, seed, None, until,
                          _TrialReporter(trial if self.kind == "finetune" else None,
                                         workdir / LOG_FILE))
        if (workdir / CHECKPOINT).exists():  # a retried trial continues where it stopped
            try:
                trainer.restore()
            except (SafetensorError, KeyError, TypeError):  # another release's: start afresh
                trainer = Trainer(model, cache, hyper, workdir, seed, None, until,
                                  _TrialReporter(trial if self.kind == "finetune" else None,
                                                 workdir / LOG_FILE))
        # The step trace is always on (trials/NNN/profile/); --profile adds the deep window.
        profile = bool(data.extra.get("profile"))
        trainer.tracer = tracer_for_run(workdir, profile)
        try:
            state: LoopState = trainer.run()
        finally:
            finish_run(trainer.tracer, workdir, profile, Console(quiet=True))
        # A finished trial is never continued: its checkpoint has served.
        (workdir / CHECKPOINT).unlink(missing_ok=True)
        _, _, logits = trainer.validate()
        probs = torch.softmax(logits, 1).numpy()
        val_items = data.val[:4]
        sample = np.stack([to_tensor(_crop(data, f, spec), spec) for f, _ in val_items])
        warmup = [data.path(f).read_bytes() for f, _ in data.val[:3]]
        used = {"views_used": len(cache.views), "train_images_used": len(cache.train_files)}
        fitted = ImageFitted(self.backbone.name, spec.to_json(),
                             {**params, **used, "epochs_run": state.epochs,
                              "best": state.best_from},
                             model.eval(), probs, warmup, sample, state.stop_reason,
                             {"backbone": self.backbone.provenance()})
        if self.kind == "finetune" and state.finetune_epochs == 0:
            fitted.stop_reason = "no fine-tuning epoch fitted the time left; head only"
        return fitted


def image_candidates() -> list[ImageCandidate]:
    out = []
    for kind in ("baseline", "finetune"):
        for backbone in IMAGE_BACKBONES.values():
            if kind == "baseline" and backbone.name != "mobilenet_v2":
                continue  # one cheap baseline is enough; the search covers the rest
            out.append(ImageCandidate(backbone, kind))
    return out
