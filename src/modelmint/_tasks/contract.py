"""What a task is, and what the search driver asks of it.

A :class:`Task` is one kind of problem (image classification, a regression, object detection):
how its data is recognised and loaded, which model families (:class:`Candidate`) can learn it,
how a trained model is scored (its primary metric, higher is better) and reported, and what a
published version serves. The driver (``_search``) owns the budget, the study, the leaderboard,
resume and publishing, and never looks inside a task. Adding a task is a folder under
``_tasks/`` and one line in :data:`modelmint._tasks.registry.TASK_MODULES`.

A *candidate* owns one family of models for one task: it suggests its own hyper-parameters from
the trial, trains within the deadline, reports intermediate scores (so the pruner can stop it)
and returns a :class:`Fitted` model that exports itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from .._data.dataset import TaskData
from .._repository import TensorSpec


class Trial(Protocol):
    """The part of ``optuna.Trial`` a candidate uses. The fixed plan (``--epochs``) passes an
    object whose suggestions are the plan's values and which never prunes."""

    @property
    def number(self) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...
    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool: ...
    def set_user_attr(self, key: str, value: Any) -> None: ...


class Fitted(Protocol):
    """A trained model, ready to be evaluated, exported and published."""

    architecture: str  # e.g. "mobilenet_v2", "tf_efficientnet_lite0", "tfidf-char+logreg"
    preprocessing: dict[str, Any]  # the spec JSON recorded in modelmint.json (has "kind")
    params: dict[str, Any]  # the hyper-parameters it was trained with

    def val_predictions(self) -> Any:
        """The model's outputs on ``data.val``, in that order, as the task's ``evaluate`` reads
        them (classification: [len(val), classes] probabilities)."""
        ...

    def export(self, directory: Path) -> None:
        """Write ``model.onnx`` and its weights into ``directory`` and check the ONNX graph
        against the trained model (refuse an export that disagrees)."""
        ...

    def warmup_payloads(self) -> list[Any]:
        """A few raw inputs for ``warmup/``: encoded bytes for a BYTES input (image file, WAV,
        UTF-8 text), or an FP32 array for a model that takes only the ``input`` tensor."""
        ...


class Candidate(Protocol):
    """One model family for one task; the driver runs it once per trial."""

    name: str  # unique and stable, e.g. "mobilenet_v2/frozen+linear", "logmel-stats+lr"
    task: str  # the task's name
    kind: str  # "baseline" (cheap, run first, fixed params) or "finetune" (searched)

    def estimate_seconds(self, data: TaskData) -> float:
        """A rough cost of one trial, so the driver can skip what cannot fit the time left."""
        ...

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> Fitted:
        """Suggest parameters from ``trial``; train until done or ``deadline``
        (``time.monotonic()``; ``math.inf``: no deadline); after each epoch
        ``trial.report(score, epoch)`` and ``raise optuna.TrialPruned()`` when
        ``trial.should_prune()``. ``workdir`` is this trial's own folder in the run directory;
        a trial retried after an interruption gets the interrupted one's folder, so a candidate
        that checkpoints there may continue from it."""
        ...


@dataclass(frozen=True)
class LoadOptions:
    """The data options of ``mint train``; a task lists in :attr:`Task.options` the ones it
    honours, and the registry refuses the others (exit 2) instead of ignoring them."""

    seed: int = 0
    strict: bool = False
    group_by: str | None = None
    reject_dir: str | None = None
    label_column: str | None = None
    text_column: str | None = None

    def given(self) -> dict[str, Any]:
        """The options set to something other than their default, by name."""
        return {name: value for name, value in vars(self).items()
                if name not in ("seed", "strict") and value is not None}


@dataclass(frozen=True)
class Task:
    name: str  # e.g. "image-classification"; recorded in run.json and modelmint.json
    describe: str  # what its data looks like, for error messages
    detect: Callable[[Path], int]  # evidence that a path holds this task's data (0: none)
    load: Callable[[Path, LoadOptions], TaskData]  # check, dedup, split (honouring options)
    candidates: Callable[[], Sequence[Candidate]]
    metric: str  # the primary metric: a key of ``evaluate``'s result, higher is better
    evaluate: Callable[[TaskData, Any], dict[str, Any]]  # (data, val predictions) -> metrics
    report_html: Callable[[dict[str, Any]], str]  # the task's sections of report.html
    print_report: Callable[[dict[str, Any], Console], None]  # the evaluation, for the terminal
    # The metrics a version records in modelmint.json (and ``mint train --json`` prints).
    version_metrics: Callable[[dict[str, Any]], dict[str, Any]]
    # The serving signature, or None for a classifier's (derived from labels + preprocessing).
    signature: Callable[[TaskData, Fitted], tuple[list[TensorSpec], list[TensorSpec]]] | None
    # ``--epochs N``: (candidate name, its parameters) trained once with no search; None: the
    # task has no model trained in epochs, and ``--epochs`` is refused.
    fixed_plan: Callable[[int], tuple[str, dict[str, Any]]] | None = None
    # What it honours beyond the data: LoadOptions.given() names, and "profile" (trials run
    # training steps a profiler can trace) and "auto_tune" (see below).
    options: frozenset[str] = field(default_factory=frozenset)
    # ``--auto-tune``: tune the input pipeline on this data before training, until the deadline
    # (``time.monotonic()``), saving what it finds in the run directory.
    auto_tune: Callable[[TaskData, Path, Console, float], None] | None = None
