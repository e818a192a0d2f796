"""The budgeted model search: an Optuna study over the registered candidates of one task.

Order of work: the cheap baselines (enqueued, fixed parameters) first, then fine-tuning trials
sampled by TPE (``candidate`` × each candidate's own hyper-parameters) and stopped early by the
median pruner, while the budget allows another one. The study lives in the run directory
(``study.db``, SQLite) unless ``--storage`` names a shared database; a heartbeat marks trials
of a dead process as failed and a retry callback queues them again, so no trial stays RUNNING.

Each trial that improves on this process's best pickles its fitted model into its trial folder
(``trials/NNN/fitted.pt``, user attribute ``artifact``), so the winner can be published after a
resume or by the coordinating process when another worker found it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from rich.console import Console

from .._data.dataset import TaskData
from .._tasks.contract import Candidate, Fitted
from .._tasks.registry import candidates_for, load_task_data
from ..errors import DataError, MintError, NotFound, TrainingInterrupted
from . import leaderboard
from .study_storage import open_study, retry_orphans

RUN_FILE = "run.json"
MAX_CONSECUTIVE_SKIPS = 3
RESERVE_SECONDS = 8.0
# After publishing, the process still prints the report and tears down torch, onnxruntime and
# the fitted models: measured 0.7-2.7 s on a busy 2-core machine, outside any trial's deadline.
EXIT_SECONDS = 1.5
# A trial that fails with one of these is recorded as failed and the search goes on (bad
# hyper-parameters can make a candidate diverge or a library refuse its input).
TRIAL_ERRORS = (MintError, RuntimeError, ValueError, ArithmeticError)
MAX_SLOWDOWN = 3.0


@dataclass
class SearchOptions:
    data: str
    name: str
    repo: str = "models"
    runs_dir: str = "runs"
    budget: float = 600.0  # wall-clock ceiling for the whole command, seconds
    seed: int = 0
    group_by: str | None = None
    reject_dir: str | None = None
    label_column: str | None = None
    text_column: str | None = None
    storage: str | None = None  # e.g. postgresql://user@host/db; default: SQLite in the run dir
    worker: bool = False  # only run trials of an existing shared study; publish nothing
    ray: str | None = None  # run trials on this Ray cluster
    max_trials: int | None = None
    candidates: list[str] | None = None  # fnmatch patterns over candidate names; None: all
    profile: bool = False  # trials that run steps add a torch.profiler window + report
    auto_tune: bool = False  # image tasks: tune the input pipeline first (≤ 1/3 of the budget)


@dataclass
class SearchOutcome:
    run_dir: Path
    data: TaskData
    study: optuna.Study
    winner: optuna.trial.FrozenTrial | None
    fitted: Fitted | None
    board: dict[str, Any]


def new_run_dir(runs_dir: Path, name: str) -> Path:
    from .._train.run import new_run_dir as spine_new_run_dir

    return spine_new_run_dir(runs_dir, name)


def _write_run(run_dir: Path, opts: SearchOptions, status: str, **extra: Any) -> None:
    data = {"kind": "search", "options": asdict(opts), "status": status, **extra}
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(run_dir / RUN_FILE)


def read_run(run_dir: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads((run_dir / RUN_FILE).read_text())
    except FileNotFoundError as exc:
        raise NotFound(f"{run_dir}: not a run directory (no {RUN_FILE})") from exc
    return loaded


def _enqueue_baselines(study: optuna.Study, baselines: list[Candidate],
                       finetune: list[Candidate]) -> None:
    """The baselines, then each fine-tuning candidate's known-good ``first_trial`` parameters
    (when it offers them), so the first fine-tuning trial is not a random draw."""
    present = {t.user_attrs.get("candidate") for t in study.get_trials(deepcopy=False)}
    for cand in baselines:
        if cand.name not in present:
            study.enqueue_trial({}, user_attrs={"candidate": cand.name, "kind": cand.kind})
    for cand in finetune:
        first = getattr(cand, "first_trial", None)
        if first is not None and cand.name not in present:
            study.enqueue_trial(first(), user_attrs={"candidate": cand.name, "kind": cand.kind})


def _accuracy(fitted: Fitted, data: TaskData) -> float:
    probs = fitted.val_probabilities()
    truth = np.asarray([y for _, y in data.val])
    return float((probs.argmax(1) == truth).mean()) if len(truth) else 0.0


class Search:
    def __init__(self, opts: SearchOptions, run_dir: Path, data: TaskData,
                 candidates: list[Candidate], study: optuna.Study, deadline: float,
                 console: Console) -> None:
        self.opts, self.run_dir, self.data = opts, run_dir, data
        self.by_name = {c.name: c for c in candidates}
        self.finetune = [c.name for c in candidates if c.kind != "baseline"]
        self.study, self.deadline, self.console = study, deadline, console
        self.fitted: dict[int, Fitted] = {}
        self.best_value = -1.0
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def objective(self, trial: optuna.Trial) -> float:
        name = trial.user_attrs.get("candidate")
        if name is None:
            if not self.finetune:
                raise optuna.TrialPruned("no fine-tuning candidate for this task")
            name = trial.suggest_categorical("candidate", self.finetune)
        cand = self.by_name[name]
        trial.set_user_attr("candidate", name)
        trial.set_user_attr("kind", cand.kind)
        trial.set_user_attr("worker", self.worker_id)
        needed = cand.estimate_seconds(self.data)
        # Baselines always run (they stop at the deadline themselves): they are the floor.
        if cand.kind != "baseline" and needed > self.seconds_left():
            trial.set_user_attr("stop_reason", f"skipped: needs ~{needed:.0f}s, "
                                f"{max(self.seconds_left(), 0):.0f}s left")
            raise optuna.TrialPruned("does not fit the time left")
        workdir = self.run_dir / "trials" / f"{trial.number:03d}"
        started = time.monotonic()
        self.console.print(f"[bold]trial {trial.number}[/] {name} "
                           f"({self.seconds_left():.0f}s left)")
        try:
            fitted = cand.fit(self.data, trial, self.deadline, workdir)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
            trial.set_user_attr("stop_reason", str(exc) or "pruned (below the median)")
            raise
        except TRIAL_ERRORS as exc:
            trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
            trial.set_user_attr("stop_reason", f"failed: {type(exc).__name__}: {exc}"[:300])
            self.console.print(f"[red]trial {trial.number} failed:[/] {exc}")
            raise
        value = _accuracy(fitted, self.data)
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        trial.set_user_attr("params", _jsonable(fitted.params))
        trial.set_user_attr("architecture", fitted.architecture)
        trial.set_user_attr("stop_reason", getattr(fitted, "stop_reason", "") or "completed")
        if value > self.best_value:  # keep only this process's best in memory and on disk
            self.best_value = value
            self.fitted = {trial.number: fitted}
            workdir.mkdir(parents=True, exist_ok=True)
            import torch  # pickles torch and sklearn models alike

            torch.save(fitted, workdir / "fitted.pt")
            trial.set_user_attr("artifact", str((workdir / "fitted.pt").resolve()))
        self.console.print(f"  → val accuracy {value:.3f} in {time.monotonic() - started:.0f}s")
        return value

    def should_continue(self, skips: int, started_trials: int) -> bool:
        if self.opts.max_trials is not None and started_trials >= self.opts.max_trials:
            return False
        if skips >= MAX_CONSECUTIVE_SKIPS:
            return False
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting:
            return self.seconds_left() > 0
        cheapest = min((self.by_name[n].estimate_seconds(self.data) for n in self.finetune),
                       default=float("inf"))
        return cheapest <= self.seconds_left()

    def run(self) -> None:
        skips = started = 0
        while self.should_continue(skips, started):
            before = len(self.study.get_trials(deepcopy=False))
            self.study.optimize(self.objective, n_trials=1, catch=TRIAL_ERRORS,
                                gc_after_trial=False)
            started += 1
            last = self.study.get_trials(deepcopy=False)[before:] or \
                self.study.get_trials(deepcopy=False)[-1:]
            skipped = any(str(t.user_attrs.get("stop_reason", "")).startswith("skipped")
                          for t in last if t.user_attrs.get("worker") == self.worker_id)
            skips = skips + 1 if skipped else 0


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, default=str))  # type: ignore[no-any-return]


def load_fitted(trial: optuna.trial.FrozenTrial, in_memory: dict[int, Fitted]) -> Fitted | None:
    if trial.number in in_memory:
        return in_memory[trial.number]
    artifact = trial.user_attrs.get("artifact")
    if artifact and Path(artifact).is_file():
        import torch

        loaded: Fitted = torch.load(artifact, map_location="cpu", weights_only=False)
        return loaded
    return None


def pick_winner(study: optuna.Study, in_memory: dict[int, Fitted]
                ) -> tuple[optuna.trial.FrozenTrial | None, Fitted | None]:
    """The best completed trial whose model is at hand (ties: the earlier, cheaper trial)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None]
    for trial in sorted(done, key=lambda t: (-float(t.value or 0.0), t.number)):
        fitted = load_fitted(trial, in_memory)
        if fitted is not None:
            return trial, fitted
    return None, None


def _select(opts: SearchOptions, task: str) -> list[Candidate]:
    candidates = candidates_for(task)
    if opts.candidates:
        known = [c.name for c in candidates]
        candidates = [c for c in candidates if any(fnmatch(c.name, p) for p in opts.candidates)]
        if not candidates:
            raise DataError(f"--candidates {' '.join(opts.candidates)}: matches none of {known}")
    if not candidates:
        raise DataError(f"{opts.data}: no model candidates are installed for {task}")
    return candidates


def publish_reserve(budget: float, started: float, cpu_started: float) -> float:
    """Seconds kept back for the final evaluation, ONNX export and check, publishing and the
    process's exit: ~5 s + ~1 s on an idle 2-core machine. When other processes compete for the
    CPU, loading the data took more wall-clock than CPU time, and publishing will too: scale the
    reserve by that ratio (capped, so a loaded machine still leaves most of the budget to the
    search)."""
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    contended = wall / max(cpu, 1e-3) if wall > 2 else 1.0
    # The load average says the same when our own decoding threads hide it from the ratio.
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 1.0
    slowdown = min(max(contended, load, 1.0), MAX_SLOWDOWN)
    return min((max(RESERVE_SECONDS, 0.1 * budget) + EXIT_SECONDS) * slowdown, 0.4 * budget)


def run_search(opts: SearchOptions, console: Console, started: float | None = None,
               resume_dir: Path | None = None) -> SearchOutcome:
    """Load the data, run the study within the budget; publishing is :mod:`.publish`'s job."""
    started = time.monotonic() if started is None else started
    if resume_dir is None:
        from .._repository import check_model_name

        check_model_name(opts.name)
        run_dir = new_run_dir(Path(opts.runs_dir), opts.name)
    else:
        run_dir = resume_dir
    _write_run(run_dir, opts, "running")
    data = load_task_data(opts.data, seed=opts.seed, group_by=opts.group_by,
                          reject_dir=opts.reject_dir, label_column=opts.label_column,
                          text_column=opts.text_column)
    data.extra["profile"] = opts.profile  # read by candidates that run training steps
    if opts.auto_tune and data.task == "image-classification" and resume_dir is None:
        from .._profile.commands import auto_tune_run

        auto_tune_run(data.root, run_dir, console, deadline=started + opts.budget / 3)
    console.print(f"{data.task}: {len(data.train)} train / {len(data.val)} val items, "
                  f"{len(data.labels)} classes; split: {data.split_note} "
                  f"({time.monotonic() - started:.0f}s)")
    # CPU time of the whole process vs wall-clock since the command began (``started``).
    deadline = started + opts.budget - publish_reserve(opts.budget, started, 0.0)
    candidates = _select(opts, data.task)
    (run_dir / "split.json").write_text(json.dumps(
        {"note": data.split_note, "labels": data.labels, "train": data.train, "val": data.val},
        indent=1))
    if opts.ray:
        from .ray_runner import check_ray

        check_ray(opts.ray)
    study = open_study(opts, run_dir, data.task)
    study.set_user_attr("task", data.task)
    if resume_dir is not None and opts.storage is None:
        for number in retry_orphans(study):
            console.print(f"[yellow]trial {number} was running when the search stopped; "
                          "queued again[/]")
    if not opts.worker:
        _enqueue_baselines(study, [c for c in candidates if c.kind == "baseline"],
                           [c for c in candidates if c.kind != "baseline"])
    search = Search(opts, run_dir, data, candidates, study, deadline, console)
    board_summary = {"model": opts.name, "task": data.task, "split": data.split_note,
                     "budget": opts.budget}
    try:
        if opts.ray:
            from .ray_runner import run_on_ray

            run_on_ray(search, opts)
        else:
            search.run()
    except KeyboardInterrupt:
        leaderboard.save(run_dir, leaderboard.rows_from_study(study), board_summary)
        _write_run(run_dir, opts, "interrupted")
        raise TrainingInterrupted(
            f"search interrupted; finished trials are kept in {run_dir}. "
            f"Continue with: mint train --resume {run_dir}", str(run_dir)) from None
    winner, fitted = pick_winner(study, search.fitted)
    rows = leaderboard.rows_from_study(study)
    board = {**board_summary, "winner": None,
             "notes": _notes(rows, winner) + _unfinished_notes(rows)}
    if winner is not None:
        board["winner"] = {"trial": winner.number, "candidate": winner.user_attrs["candidate"],
                           "val_accuracy": winner.value}
    leaderboard.save(run_dir, rows, board)
    board["trials"] = rows
    return SearchOutcome(run_dir, data, study, winner, fitted, board)


def _unfinished_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per candidate that never completed a trial: why (its last trial's reason)."""
    last: dict[str, str] = {}
    done = {r["candidate"] for r in rows if r["state"] == "complete"}
    for row in rows:
        if row["candidate"] not in done:
            last[row["candidate"]] = str(row["stop_reason"])
    return [f"{name} did not finish a trial: {why}" for name, why in last.items()]


def _notes(rows: list[dict[str, Any]], winner: optuna.trial.FrozenTrial | None) -> list[str]:
    """Did fine-tuning beat the frozen baseline, and if not, why not."""
    done = [r for r in rows if r["state"] == "complete" and r["val_accuracy"] is not None]
    base = [r for r in done if r["kind"] == "baseline"]
    tuned = [r for r in done if r["kind"] != "baseline"
             and not str(r["stop_reason"]).startswith("no fine-tuning epoch")]
    if not base:
        return ["no baseline trial completed"]
    best_base = max(base, key=lambda r: r["val_accuracy"])
    if not tuned:
        tried = [r for r in rows if r["kind"] != "baseline"]
        why = (f"fine-tuning trials did not finish ({tried[-1]['stop_reason']})" if tried else
               "the budget left no room for a fine-tuning trial after the baselines; raise "
               "--budget")
        return [f"winner is the baseline {best_base['candidate']} "
                f"({best_base['val_accuracy']:.3f}): {why}"]
    best_tuned = max(tuned, key=lambda r: r["val_accuracy"])
    delta = best_tuned["val_accuracy"] - best_base["val_accuracy"]
    if delta > 0:
        return [f"fine-tuning ({best_tuned['candidate']}, {best_tuned['val_accuracy']:.3f}) beat "
                f"the frozen baseline ({best_base['val_accuracy']:.3f}) by {delta:+.3f}"]
    return [f"fine-tuning did not beat the frozen baseline ({best_tuned['val_accuracy']:.3f} vs "
            f"{best_base['val_accuracy']:.3f}) in {len(tuned)} trial(s): the validation set "
            "cannot tell them apart or the budget allowed too few epochs"]

