"""The options of one ``mint train`` run, as the driver, ``run.json`` and resume see them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .._tasks.contract import LoadOptions
from ..errors import DataError

DEFAULT_BUDGET = 600.0  # seconds, for a search; the fixed plan has no ceiling unless given one


@dataclass
class TrainOptions:
    data: str
    name: str
    repo: str = "models"
    runs_dir: str = "runs"
    budget: float | None = None  # wall-clock ceiling for the whole command, seconds
    epochs: int | None = None  # the fixed plan: one candidate, N epochs, no search
    seed: int = 0
    strict: bool = False
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

    @property
    def fixed(self) -> bool:
        return self.epochs is not None

    def seconds(self) -> float:
        """The budget in force: the one given, else the search's default, else none (inf)."""
        if self.budget is not None:
            return self.budget
        return float("inf") if self.fixed else DEFAULT_BUDGET

    def load_options(self) -> LoadOptions:
        return LoadOptions(seed=self.seed, strict=self.strict, group_by=self.group_by,
                           reject_dir=self.reject_dir, label_column=self.label_column,
                           text_column=self.text_column)

    def check(self) -> None:
        """Refuse combinations that cannot mean anything, naming the options (exit 2)."""
        if self.budget is not None and self.budget <= 0:
            raise DataError(f"--budget {self.budget:g}: expected a positive number of seconds")
        if self.epochs is not None and self.epochs < 1:
            raise DataError(f"--epochs {self.epochs}: expected 1 or more")
        if self.max_trials is not None and self.max_trials < 1:
            raise DataError(f"--max-trials {self.max_trials}: expected 1 or more")
        if self.fixed:
            search_only = {"--candidates": self.candidates, "--max-trials": self.max_trials,
                           "--storage": self.storage, "--worker": self.worker or None,
                           "--ray": self.ray}
            given = [flag for flag, value in search_only.items() if value]
            if given:
                raise DataError(f"{', '.join(given)} steer a model search; --epochs trains one "
                                "fixed recipe in this process with no search. Leave out "
                                f"{' and '.join(given)}, or --epochs to search")
        if self.worker and not self.storage:
            raise DataError("--worker joins a shared study: give its --storage URL too")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> TrainOptions:
        """Options saved in a run directory; a search run of an earlier release named the data
        the same way, so its options load as they are (unknown keys are dropped)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})
