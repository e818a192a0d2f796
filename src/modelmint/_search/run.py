"""``mint train`` as a function: the plan runs, the winner is evaluated, reported and published;
and ``--resume`` of an interrupted run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .._repository import check_model_name, open_repository
from ..errors import DataError
from . import leaderboard
from .artifact import INFO_FILE, SavedFitted
from .driver import SearchOutcome, run_search
from .options import TrainOptions
from .publish import REPORT_HTML, publish_version, version_metadata
from .report import build_report, render_html
from .rundir import new_run_dir, resumable_options, write_run


@dataclass
class TrainResult:
    """What a run produced; :meth:`to_json` is what ``mint train --json`` prints."""

    model: str
    task: str
    run_dir: str
    metric: str  # the task's primary metric, e.g. "accuracy"
    version: int | None = None  # None: a --worker process publishes nothing
    version_dir: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # as recorded in modelmint.json
    train_seconds: float = 0.0
    epochs: int = 0
    winner: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    split: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def val_accuracy(self) -> float | None:
        value = self.metrics.get("val_accuracy")
        return None if value is None else float(value)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "version": self.version,
                **self.metrics, "metric": self.metric,
                "train_seconds": self.train_seconds, "seconds": self.train_seconds,
                "epochs": self.epochs, "run_dir": self.run_dir, "version_dir": self.version_dir,
                "winner": self.winner, "trials": self.trials, "split": self.split,
                "notes": self.notes, "warnings": self.warnings,
                "skipped_files": self.skipped_files}


def train(opts: TrainOptions, console: Console, started: float | None = None) -> TrainResult:
    """Run ``opts``' plan in a new run directory and publish the winner. ``started``: a
    ``time.monotonic()`` taken when the command began, so the budget covers start-up too."""
    started = time.monotonic() if started is None else started
    opts.check()
    check_model_name(opts.name)
    if str(opts.repo).startswith("s3://"):  # a missing bucket fails now, not after the run
        open_repository(str(opts.repo)).check()
    run_dir = new_run_dir(Path(opts.runs_dir), opts.name)
    return _finish(opts, run_search(opts, run_dir, console, started, resuming=False), console,
                   started)


def resume(run_dir: str | Path, console: Console, budget: float | None = None,
           started: float | None = None) -> TrainResult:
    """Continue an interrupted run; ``budget`` replaces the saved one when given."""
    started = time.monotonic() if started is None else started
    path = Path(run_dir)
    opts = resumable_options(path)
    if budget is not None:
        opts.budget = budget
    opts.check()
    return _finish(opts, run_search(opts, path, console, started, resuming=True), console,
                   started)


def _finish(opts: TrainOptions, outcome: SearchOutcome, console: Console,
            started: float) -> TrainResult:
    run_dir, task, data, board = outcome.run_dir, outcome.task, outcome.data, outcome.board
    leaderboard.print_leaderboard(board, console)
    result = TrainResult(
        model=opts.name, task=data.task, run_dir=str(run_dir), metric=task.metric,
        winner=board["winner"], trials=board["trials"], split=data.split_note,
        notes=board["notes"], warnings=list(data.warnings),
        skipped_files=[str(f) for f in data.extra.get("skipped", [])])
    if opts.worker:
        result.train_seconds = round(time.monotonic() - started, 2)
        write_run(run_dir, opts, "worker-done", seconds=result.train_seconds)
        return result
    if outcome.fitted is None or outcome.winner is None:
        write_run(run_dir, opts, "failed")
        raise DataError(f"no trial finished within --budget {opts.seconds():g}s (see "
                        f"{run_dir / leaderboard.LEADERBOARD_FILE}); raise the budget")
    fitted, winner = outcome.fitted, outcome.winner
    saved = Path(str(winner.user_attrs.get("artifact", "")))
    if (saved / INFO_FILE).is_file():  # already exported and checked: publishing copies it
        fitted = SavedFitted(saved)
    evaluation = task.evaluate(data, fitted.val_predictions())
    winner_info = {**board["winner"], "architecture": fitted.architecture,
                   "params": fitted.params}
    report = build_report(task, data, evaluation, winner_info, board)
    html_text = render_html(report, f"{opts.name}: evaluation report", task)
    (run_dir / "report.json").write_text(_dumps(report))
    (run_dir / REPORT_HTML).write_text(html_text)
    trial_dir = run_dir / str(winner.user_attrs.get("workdir", f"trials/{winner.number:03d}"))
    provenance = {
        "data_root": str(data.root), "split_source": data.split_note,
        "split": {"train": [[f, data.target_json(y)] for f, y in data.train],
                  "val": [[f, data.target_json(y)] for f, y in data.val]},
        **({"data_fingerprint": data.extra["fingerprint"]} if "fingerprint" in data.extra
           else {}),
        # A text table's chosen columns, so that the optimizer re-reads the same ones.
        **({"columns": data.extra["columns"]} if "columns" in data.extra else {}),
        "search": {"run_dir": str(run_dir), "trial": winner.number, "plan": board["plan"],
                   "candidate": winner.user_attrs.get("candidate"), "budget": opts.budget,
                   "trials": len(board["trials"]), "seed": opts.seed},
        "hyperparameters": fitted.params,
        "training": {"run_dir": str(trial_dir),
                     "stop_reason": getattr(fitted, "stop_reason", "")},
        **getattr(fitted, "provenance", {}),
    }
    console.print(f"publishing trial {winner.number} ({time.monotonic() - started:.0f}s)")
    meta = version_metadata(opts.name, task, data, fitted, evaluation, provenance)
    ref = publish_version(opts.repo, meta, fitted, report, html_text)
    version, path = ref.version, ref.path
    result.train_seconds = round(time.monotonic() - started, 2)
    write_run(run_dir, opts, "published", version=version, seconds=result.train_seconds)
    result.version, result.version_dir = version, str(path)
    result.metrics = task.version_metrics(evaluation)
    result.epochs = int(fitted.params.get("epochs_run", 0) or 0)
    result.report = report
    return result


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)
