"""``mint train``: data check → cached transfer learning → evaluation → published version.

Everything a run knows lives in ``runs/<model>-<n>/``: ``run.json`` (options and status), the
split lists, ``data_report.json``, ``cache.pt``, ``checkpoint.pt`` and ``log.jsonl``. That is
what makes ``--resume`` possible after Ctrl-C or a crash.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from .._data.check import DataReport, check_dataset
from .._data.layout import discover
from .._data.preprocess import to_tensor
from .._profile.commands import auto_tune_run, finish_run, tracer_for_run
from .._repository import ONNX_FILE, ModelMetadata, ModelRepository, check_model_name
from ..errors import DataError, NotFound, TrainingInterrupted
from .backbone import BACKBONES, build
from .cache import ActivationCache, build_cache
from .evaluate import classification_report
from .export import check_onnx
from .loop import CHECKPOINT, Hyper, Trainer
from .package import write_version
from .progress import RichReporter

RUN_FILE = "run.json"
CACHE_FILE = "cache.pt"


@dataclass
class TrainOptions:
    data_root: str
    name: str
    repo: str
    runs_dir: str = "runs"
    budget: float | None = None  # wall-clock ceiling for the whole command, seconds
    epochs: int | None = None  # fixed fine-tuning epochs instead of a budget
    seed: int = 0
    strict: bool = False
    backbone: str = "mobilenet_v2"
    views: list[str] = field(default_factory=lambda: ["center", "hflip"])
    hyper: Hyper = field(default_factory=Hyper)
    profile: bool = False  # torch.profiler window + report (profile/); auto_tune: see profile/
    auto_tune: bool = False


@dataclass
class TrainResult:
    model: str
    version: int
    val_accuracy: float
    train_seconds: float
    epochs: int
    skipped_files: list[str]
    warnings: list[str]
    run_dir: str
    report: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "val_accuracy": self.val_accuracy,
                "train_seconds": self.train_seconds, "epochs": self.epochs,
                "skipped_files": self.skipped_files, "warnings": self.warnings,
                "run_dir": self.run_dir}


def new_run_dir(runs_dir: Path, name: str) -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True)
    n = 1 + max((int(p.name.rsplit("-", 1)[1]) for p in runs_dir.glob(f"{name}-*")
                 if p.name.rsplit("-", 1)[1].isdigit()), default=0)
    while True:
        path = runs_dir / f"{name}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def _write_status(run_dir: Path, opts: TrainOptions, status: str, **extra: Any) -> None:
    data = {"options": {**asdict(opts), "hyper": asdict(opts.hyper)}, "status": status, **extra}
    (run_dir / RUN_FILE).write_text(json.dumps(data, indent=2))


def train(opts: TrainOptions, console: Console, started: float | None = None) -> TrainResult:
    """``started``: a ``time.monotonic()`` taken when the command began (the CLI passes its own,
    so the budget also covers interpreter start-up and importing torch)."""
    check_model_name(opts.name)
    if opts.backbone not in BACKBONES:
        raise DataError(f"--backbone {opts.backbone!r}: expected one of {sorted(BACKBONES)}")
    run_dir = new_run_dir(Path(opts.runs_dir), opts.name)
    _write_status(run_dir, opts, "running")
    return _execute(opts, run_dir, console, resuming=False, started=started)


def resume(run_dir: str | Path, console: Console, budget: float | None = None,
           started: float | None = None) -> TrainResult:
    path = Path(run_dir)
    try:
        data = json.loads((path / RUN_FILE).read_text())
    except FileNotFoundError as exc:
        raise NotFound(f"{path}: not a run directory (no {RUN_FILE})") from exc
    raw = data["options"]
    opts = TrainOptions(**{**raw, "hyper": Hyper(**raw["hyper"])})
    if data.get("status") == "published":
        raise DataError(f"{path}: this run already published {opts.name} version "
                        f"{data.get('version')}; start a new run instead")
    if budget is not None:
        opts.budget = budget
    return _execute(opts, path, console, resuming=True, started=started)


def _execute(opts: TrainOptions, run_dir: Path, console: Console, resuming: bool,
             started: float | None = None) -> TrainResult:
    started = time.monotonic() if started is None else started
    budget_note = ""
    # Keep back what export, evaluation and publishing need, so the budget is a true ceiling.
    reserve = max(5.0, 0.08 * opts.budget) if opts.budget else 0.0
    deadline = started + opts.budget - reserve if opts.budget else None
    torch.manual_seed(opts.seed)
    info = BACKBONES[opts.backbone]
    try:
        with RichReporter(console, run_dir / "log.jsonl") as reporter:
            layout = discover(opts.data_root, seed=opts.seed)
            reporter.phase("check", len(layout.samples))
            data = check_dataset(layout, info.spec, strict=opts.strict, keep_crops=True,
                                 progress=lambda i, n: reporter.advance())
            if not data.val:
                raise DataError(f"{layout.root}: no usable validation images; add a val/ folder "
                                "or more images per class")
            if not resuming:
                _save_split(run_dir, data)
            labels = layout.classes
            train_items = [(s.rel(layout.root), labels.index(s.label)) for s in data.train]
            val_items = [(s.rel(layout.root), labels.index(s.label)) for s in data.val]
            if opts.auto_tune and not resuming:
                auto_tune_run(opts.data_root, run_dir, console)
            model = build(info, len(labels))
            cache_path = run_dir / CACHE_FILE
            if resuming and cache_path.exists():
                cache = ActivationCache.load(cache_path)
            else:
                reporter.phase("cache",
                               len(val_items) + len(train_items) * len(opts.views))
                cache = build_cache(model.prefix, data.crops, train_items, val_items, info.spec,
                                    opts.views, deadline, tick=reporter.advance)
                cache.save(cache_path)
            if len(cache.train_files) < len(train_items):
                budget_note = (f"budget: only {len(cache.train_files)} of {len(train_items)} "
                               "training images fit in --budget; raise it to use them all")
                kept = set(cache.train_files)
                train_items = [item for item in train_items if item[0] in kept]
            trainer = Trainer(model, cache, opts.hyper, run_dir, opts.seed, opts.epochs,
                              deadline, reporter)
            if resuming and (run_dir / CHECKPOINT).exists():
                trainer.restore()
            trainer.tracer = tracer_for_run(run_dir, opts.profile)
            state = trainer.run()
            finish_run(trainer.tracer, run_dir, opts.profile, console)
    except KeyboardInterrupt:
        _write_status(run_dir, opts, "interrupted")
        raise TrainingInterrupted(
            f"training interrupted; the best checkpoint so far is in {run_dir}. "
            f"Continue with: mint train --resume {run_dir}", str(run_dir)) from None

    _, _, logits = trainer.validate()
    probs = torch.softmax(logits, 1).numpy()
    report = classification_report(cache.val_y.numpy(), probs, labels, cache.val_files)
    meta = ModelMetadata(
        name=opts.name, labels=labels, architecture=info.name, preprocessing=info.spec,
        metrics={"val_accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                 "val_samples": report["samples"]},
        provenance={
            "data_root": str(layout.root), "data_fingerprint": data.fingerprint,
            "split_source": layout.split_source,
            "split": {"train": [[f, labels[y]] for f, y in train_items],
                      "val": [[f, labels[y]] for f, y in val_items]},
            "backbone": {"name": info.name, "weights": info.weights_file, "cut": info.cut},
            "hyperparameters": {**asdict(opts.hyper), "views": cache.views, "seed": opts.seed,
                                "budget": opts.budget, "epochs": opts.epochs},
            "training": {"head_epochs": state.head_epochs,
                         "finetune_epochs": state.finetune_epochs, "best": state.best_from,
                         "stop_reason": state.stop_reason, "run_dir": str(run_dir)},
        })
    full_report = {"evaluation": report, "data": data.to_json(), "history": state.history}
    warmup = [(layout.root / f).read_bytes() for f, _ in val_items[:3]]
    sample = np.stack([to_tensor(data.crops[f], info.spec) for f, _ in val_items[:4]])

    def write(tmp: Path, version: int) -> None:
        write_version(tmp, version, model, meta, full_report, warmup)
        check_onnx(tmp / ONNX_FILE, model, sample)

    ref = ModelRepository(opts.repo).publish(opts.name, write)
    seconds = round(time.monotonic() - started, 2)
    _write_status(run_dir, opts, "published", version=ref.version, seconds=seconds)
    notes = [budget_note] if budget_note else []
    return TrainResult(opts.name, ref.version, report["accuracy"], seconds, state.epochs,
                       data.skipped, [*notes, *_warnings(data)], str(run_dir), full_report)


def _save_split(run_dir: Path, data: DataReport) -> None:
    split = run_dir / "split"
    split.mkdir(exist_ok=True)
    root = data.layout.root
    for name, samples in (("train", data.train), ("val", data.val)):
        (split / f"{name}.txt").write_text(
            "".join(f"{s.rel(root)}\t{s.label}\n" for s in samples))
    (run_dir / "data_report.json").write_text(json.dumps(data.to_json(), indent=2))


def _warnings(data: DataReport) -> list[str]:
    return [*data.warnings, *(f"{i.path}: {i.reason}" for i in data.issues)]
