"""The one training driver: a task's candidates run as trials of an Optuna study, under one
budget, into one run directory, and the best is what gets published.

Two plans share every step. The *search* (the default) runs the cheap baselines first
(enqueued, fixed parameters), then fine-tuning trials sampled by TPE (``candidate`` × each
candidate's own hyper-parameters), stopped early by the median pruner, while the budget allows
another one. The *fixed* plan (``--epochs N``) runs one trial of the task's fixed candidate with
the plan's parameters and no pruning, so the same seed on the same machine gives the same
weights. The study lives in the run directory (``study.db``, SQLite) unless ``--storage`` names
a shared database; a heartbeat marks the trials of a dead process as failed and queues them
again, and a trial interrupted by Ctrl-C is queued again on ``--resume``, in its own folder,
where a candidate may continue from its checkpoint.

Each trial that improves on this process's best exports its model into its trial folder
(``trials/NNN/fitted/``, user attribute ``artifact``; no pickle), so the winner can be
published after a resume, or by the coordinating process when another worker found it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console

from .._data.dataset import TaskData
from .._tasks.contract import Candidate, Fitted, Task
from .._tasks.registry import candidates_for, get_task, load_task_data
from ..errors import DataError, MintError, TrainingInterrupted
from . import leaderboard
from .artifact import INFO_FILE, SavedFitted, save_fitted
from .interrupt import interrupt_outside_storage
from .notes import notes_for
from .options import TrainOptions
from .plan import FixedTrial, enqueue_plan, requeue_interrupted
from .rundir import write_run
from .study_storage import open_study, retry_orphans

MAX_CONSECUTIVE_SKIPS = 3
RESERVE_SECONDS = 8.0
# After publishing, the process still prints the report and tears down torch, onnxruntime and
# the fitted models: measured 0.7-2.7 s on a busy 2-core machine, outside any trial's deadline.
EXIT_SECONDS = 1.5
# A trial that fails with one of these is recorded as failed and the search goes on (bad
# hyper-parameters can make a candidate diverge or a library refuse its input).
TRIAL_ERRORS = (MintError, RuntimeError, ValueError, ArithmeticError)
MAX_SLOWDOWN = 3.0
INTERRUPTED = "interrupted"
FITTED_DIR = "fitted"  # a trial's best model, exported (see .artifact)


@dataclass
class SearchOutcome:
    run_dir: Path
    task: Task
    data: TaskData
    study: optuna.Study
    winner: optuna.trial.FrozenTrial | None
    fitted: Fitted | None
    board: dict[str, Any]


class Search:
    def __init__(self, opts: TrainOptions, run_dir: Path, task: Task, data: TaskData,
                 candidates: list[Candidate], study: optuna.Study, deadline: float,
                 console: Console) -> None:
        self.opts, self.run_dir, self.task, self.data = opts, run_dir, task, data
        self.by_name = {c.name: c for c in candidates}
        self.finetune = [c.name for c in candidates if c.kind != "baseline"]
        self.study, self.deadline, self.console = study, deadline, console
        self.fitted: dict[int, Fitted] = {}
        self.best_value = -math.inf
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
        trial.set_user_attr("kind", trial.user_attrs.get("kind", cand.kind))
        trial.set_user_attr("worker", self.worker_id)
        # A retried trial keeps the folder of the one it replaces (its checkpoint is there).
        folder = trial.user_attrs.get("workdir") or f"trials/{trial.number:03d}"
        trial.set_user_attr("workdir", folder)
        needed = cand.estimate_seconds(self.data)
        fixed = trial.user_attrs.get("fixed_params")
        # Baselines and the fixed plan always run (they stop at the deadline themselves).
        if cand.kind != "baseline" and fixed is None and needed > self.seconds_left():
            trial.set_user_attr("stop_reason", f"skipped: needs ~{needed:.0f}s, "
                                f"{max(self.seconds_left(), 0):.0f}s left")
            raise optuna.TrialPruned("does not fit the time left")
        workdir = self.run_dir / folder
        started = time.monotonic()
        left = "" if math.isinf(self.deadline) else f" ({self.seconds_left():.0f}s left)"
        self.console.print(f"[bold]trial {trial.number}[/] {name}{left}")
        try:
            fitted = cand.fit(self.data, trial if fixed is None else FixedTrial(trial, fixed),
                              self.deadline, workdir)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
            trial.set_user_attr("stop_reason", str(exc) or "pruned (below the median)")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("stop_reason", INTERRUPTED)
            raise
        except TRIAL_ERRORS as exc:
            trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
            trial.set_user_attr("stop_reason", f"failed: {type(exc).__name__}: {exc}"[:300])
            self.console.print(f"[red]trial {trial.number} failed:[/] {exc}")
            raise
        value = float(self.task.evaluate(self.data, fitted.val_predictions())[self.task.metric])
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        trial.set_user_attr("params", _jsonable(fitted.params))
        trial.set_user_attr("architecture", fitted.architecture)
        trial.set_user_attr("stop_reason", getattr(fitted, "stop_reason", "") or "completed")
        if value > self.best_value:  # keep only this process's best in memory and on disk
            self.best_value = value
            self.fitted = {trial.number: fitted}
            saved = save_fitted(fitted, workdir / FITTED_DIR)
            trial.set_user_attr("artifact", str(saved.resolve()))
        self.console.print(f"  → val {self.task.metric} {value:.3f} in "
                           f"{time.monotonic() - started:.0f}s")
        return value

    def trials_done(self) -> int:
        """The study's ended trials (complete, pruned or failed), over every process of the run,
        so that ``--max-trials`` holds across resumes. A trial that a resume queued again counts
        once: its retry counts, the trial it replaces does not."""
        trials = self.study.get_trials(deepcopy=False)
        replaced = {t.user_attrs.get("retry_of") for t in trials}  # interrupted (Ctrl-C)
        replaced |= {t.system_attrs.get("failed_trial") for t in trials}  # killed (no heartbeat)
        return sum(1 for t in trials if t.state.is_finished() and t.number not in replaced)

    def should_continue(self, skips: int, started_trials: int) -> bool:
        if self.opts.fixed:  # one trial of the plan, until it completes or cannot
            return started_trials == 0
        if self.opts.max_trials is not None and self.trials_done() >= self.opts.max_trials:
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
    if artifact and (Path(artifact) / INFO_FILE).is_file():
        return SavedFitted(Path(artifact))
    return None  # not saved (a trial of another release), or its folder is gone


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


def select_candidates(opts: TrainOptions, task: Task) -> list[Candidate]:
    """The fixed plan's one candidate, or every candidate ``--candidates`` lets through."""
    candidates = candidates_for(task.name)
    if opts.fixed:
        if task.fixed_plan is None:
            raise DataError(f"--epochs: {task.name} models are not trained in epochs here; "
                            "leave out --epochs and give --budget to search them")
        name, _ = task.fixed_plan(opts.epochs or 1)
        return [c for c in candidates if c.name == name]
    if opts.candidates:
        known = [c.name for c in candidates]
        candidates = [c for c in candidates if any(fnmatch(c.name, p) for p in opts.candidates)]
        if not candidates:
            raise DataError(f"--candidates {' '.join(opts.candidates)}: matches none of {known}")
    if not candidates:
        raise DataError(f"{opts.data}: no model candidates are installed for {task.name}")
    return candidates


def check_task_options(opts: TrainOptions, task: Task) -> None:
    """Refuse the run-wide options a task cannot honour, instead of ignoring them."""
    for flag, wanted, key in (("--profile", opts.profile, "profile"),
                              ("--auto-tune", opts.auto_tune, "auto_tune")):
        if wanted and key not in task.options:
            raise DataError(f"{flag} does not apply to {task.name}: its models do not train "
                            "in profiled steps; leave it out")


def publish_reserve(budget: float, started: float, cpu_started: float) -> float:
    """Seconds kept back for the final evaluation, ONNX export and check, publishing and the
    process's exit: ~5 s + ~1 s on an idle 2-core machine. When other processes compete for the
    CPU, loading the data took more wall-clock than CPU time, and publishing will too: scale the
    reserve by that ratio (capped, so a loaded machine still leaves most of the budget to the
    search). Without a budget there is nothing to keep back."""
    if math.isinf(budget):
        return 0.0
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    contended = wall / max(cpu, 1e-3) if wall > 2 else 1.0
    # The load average says the same when our own decoding threads hide it from the ratio.
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 1.0
    slowdown = min(max(contended, load, 1.0), MAX_SLOWDOWN)
    return min((max(RESERVE_SECONDS, 0.1 * budget) + EXIT_SECONDS) * slowdown, 0.4 * budget)


def load_data(opts: TrainOptions) -> tuple[Task, TaskData]:
    data = load_task_data(opts.data, opts.load_options())
    task = get_task(data.task)
    check_task_options(opts, task)
    # Read by candidates: the seed of their initialisation and shuffling, and --profile.
    data.extra.update(seed=opts.seed, profile=opts.profile)
    return task, data


def run_search(opts: TrainOptions, run_dir: Path, console: Console, started: float,
               resuming: bool) -> SearchOutcome:
    """Load the data, run the plan within the budget; publishing is :mod:`.run`'s job."""
    write_run(run_dir, opts, "running")
    task, data = load_data(opts)
    budget = opts.seconds()
    if opts.auto_tune and task.auto_tune is not None and not resuming:
        task.auto_tune(data, run_dir, console, started + budget / 3)
    console.print(f"{data.task}: {len(data.train)} train / {len(data.val)} val items, "
                  f"{len(data.labels)} classes; split: {data.split_note} "
                  f"({time.monotonic() - started:.0f}s)")
    # CPU time of the whole process vs wall-clock since the command began (``started``).
    deadline = started + budget - publish_reserve(budget, started, 0.0)
    candidates = select_candidates(opts, task)
    (run_dir / "split.json").write_text(json.dumps(
        {"note": data.split_note, "labels": data.labels, "train": data.train, "val": data.val},
        indent=1))
    if opts.ray:
        from .ray_runner import check_ray

        check_ray(opts.ray)
    study = open_study(opts, run_dir, data.task)
    study.set_user_attr("task", data.task)
    if resuming and opts.storage is None:
        for number in [*retry_orphans(study), *requeue_interrupted(study, INTERRUPTED)]:
            console.print(f"[yellow]trial {number} was running when the run stopped; "
                          "queued again[/]")
    if not opts.worker:
        enqueue_plan(study, opts, task, candidates)
    search = Search(opts, run_dir, task, data, candidates, study, deadline, console)
    board_summary: dict[str, Any] = {"model": opts.name, "task": data.task, "metric": task.metric,
                     "plan": "fixed" if opts.fixed else "search", "split": data.split_note,
                     "budget": opts.budget}
    try:
        with interrupt_outside_storage():
            if opts.ray:
                from .ray_runner import run_on_ray

                run_on_ray(search, opts)
            else:
                search.run()
    except KeyboardInterrupt:
        leaderboard.save(run_dir, leaderboard.rows_from_study(study), board_summary)
        write_run(run_dir, opts, "interrupted")
        raise TrainingInterrupted(
            f"training interrupted; finished trials and checkpoints are kept in {run_dir}. "
            f"Continue with: mint train --resume {run_dir}", str(run_dir)) from None
    winner, fitted = pick_winner(study, search.fitted)
    rows = leaderboard.rows_from_study(study)
    board = {**board_summary, "winner": None, "notes": notes_for(rows, opts.fixed)}
    if winner is not None:
        board["winner"] = {"trial": winner.number, "candidate": winner.user_attrs["candidate"],
                           "score": winner.value}
    leaderboard.save(run_dir, rows, board)
    board["trials"] = rows
    return SearchOutcome(run_dir, task, data, study, winner, fitted, board)
