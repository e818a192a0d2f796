"""A labelled data set after discovery, data check, dedup and splitting: what every task's
loader returns and every candidate trains on.

Each item is ``(item id, target)``. The target is whatever the task learns: a class index for
classification (``labels[target]`` names it), a number for a regression, a list of labelled
boxes for detection. Targets must be JSON-serialisable: the split is saved with the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TaskData:
    """A labelled data set after discovery, data check, dedup and splitting."""

    task: str  # the registered task name, e.g. "image-classification"
    root: Path  # the data folder, or the TSV/CSV file for text
    labels: list[str]  # class index -> name ("other" last when --reject-dir is given)
    train: list[tuple[str, Any]]  # (item id, target); item id: path relative to root,
    val: list[tuple[str, Any]]  # or for text the row id as a string
    split_note: str  # what the report states, e.g. "held-out speakers (--group-by '_([a-z]+)_')"
    groups: dict[str, str] = field(default_factory=dict)  # item id -> group, when grouped
    texts: dict[str, str] = field(default_factory=dict)  # text tasks: item id -> text
    reject_label: str | None = None  # the "none of these" class, when --reject-dir is given
    warnings: list[str] = field(default_factory=list)  # data-check findings to print/report
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific (e.g. the DataReport)

    def path(self, item: str) -> Path:
        return self.root / item

    def target_json(self, target: Any) -> Any:
        """A target as the provenance records it: a class by its name, anything else as is."""
        if self.labels and isinstance(target, int):
            return self.labels[target]
        return target
