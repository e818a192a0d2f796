"""Rich progress for training: one bar per phase, with loss, accuracy and time left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class RichReporter:
    """Implements :class:`~modelmint._train.loop.Reporter`; also appends to ``log.jsonl``."""

    def __init__(self, console: Console, log_path: Path | None = None) -> None:
        self.console = console
        self.log_path = log_path
        self.progress = Progress(
            TextColumn("[bold]{task.description:<8}"), BarColumn(bar_width=16),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
            TextColumn("[dim]{task.fields[left]}"), console=console, transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self.progress.stop()

    def phase(self, description: str, total: int) -> None:
        self._finish()
        self._task = self.progress.add_task(description, total=total, info="", left="")

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self.progress.advance(self._task, n)

    def stage(self, name: str, total_epochs: int) -> None:
        self.phase(name, total_epochs)

    def epoch(self, record: dict[str, Any], seconds_left: float | None) -> None:
        info = (f"loss {record['train_loss']:.3f} val {record['val_loss']:.3f} "
                f"{record['val_accuracy']:.1%}{'*' if record['best'] else ' '}")
        left = "" if seconds_left is None else f"{max(seconds_left, 0):.0f}s left"
        if self._task is not None:
            self.progress.update(self._task, advance=1, info=info, left=left)
        self.log(record)

    def log(self, record: dict[str, Any]) -> None:
        if self.log_path is not None:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _finish(self) -> None:
        if self._task is not None:
            task = self.progress.tasks[-1]
            # A stage stopped early shows as complete at the epochs it ran.
            self.progress.update(self._task, total=task.completed)
