"""What a study is asked to run: the search's baselines and first guesses, or the fixed plan's
one trial; and the trials an interruption left unfinished, queued again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from .._tasks.contract import Candidate, Task
from .options import TrainOptions

# User attributes a retry must not inherit from the trial it replaces.
_OUTCOME_ATTRS = ("stop_reason", "seconds", "artifact", "params", "architecture", "worker")


class FixedTrial:
    """The fixed plan's trial: every suggestion is the plan's value (the study's trial still
    records the run), and nothing prunes it."""

    def __init__(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        self._trial, self._params = trial, params

    @property
    def number(self) -> int:
        return self._trial.number

    def _value(self, name: str) -> Any:
        if name not in self._params:
            raise ValueError(f"the fixed plan has no value for {name!r}; it sets "
                             f"{sorted(self._params)}")
        return self._params[name]

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return float(self._value(name))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        return int(self._value(name))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._value(name)

    def report(self, value: float, step: int) -> None:
        self._trial.report(value, step)  # the leaderboard's curve; never used to prune

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self._trial.set_user_attr(key, value)


def enqueue_plan(study: optuna.Study, opts: TrainOptions, task: Task,
                 candidates: list[Candidate]) -> None:
    """Queue what the plan starts with, unless an earlier process of this run already did."""
    present = {t.user_attrs.get("candidate") for t in study.get_trials(deepcopy=False)}
    if opts.fixed:
        assert task.fixed_plan is not None  # select_candidates refused it otherwise
        name, params = task.fixed_plan(opts.epochs or 1)
        if name not in present:
            study.enqueue_trial({}, user_attrs={"candidate": name, "kind": "fixed",
                                                "fixed_params": params})
        return
    # The baselines, then each fine-tuning candidate's known-good ``first_trial`` parameters
    # (when it offers them), so the first fine-tuning trial is not a random draw.
    for cand in candidates:
        if cand.name in present:
            continue
        if cand.kind == "baseline":
            study.enqueue_trial({}, user_attrs={"candidate": cand.name, "kind": cand.kind})
    for cand in candidates:
        first = getattr(cand, "first_trial", None)
        if cand.kind != "baseline" and first is not None and cand.name not in present:
            study.enqueue_trial(first(), user_attrs={"candidate": cand.name, "kind": cand.kind})


def requeue_interrupted(study: optuna.Study, reason: str) -> list[int]:
    """Queue once more each trial that Ctrl-C stopped (``stop_reason == reason``), with its
    parameters and its folder, so it can continue from its checkpoint."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        if (trial.state == TrialState.FAIL and trial.user_attrs.get("stop_reason") == reason
                and trial.number not in retried):
            attrs = {k: v for k, v in trial.user_attrs.items() if k not in _OUTCOME_ATTRS}
            study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number},
                                skip_if_exists=False)
            queued.append(trial.number)
    return queued
