"""Which tasks exist, which one a data path holds, and how it becomes a :class:`TaskData`.

A task lives in its own module (``modelmint._tasks.<name>``) exposing ``TASK``; adding one is a
line in :data:`TASK_MODULES`. Task modules are imported only when asked for, so a missing
optional library breaks only the task that needs it. :func:`register_task` adds a task at run
time (a plugin package, or a test's toy task).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .._data.dataset import TaskData
from ..errors import DataError
from .contract import Candidate, LoadOptions, Task

TASK_MODULES = {
    "image-classification": "modelmint._tasks.image",
    "audio-classification": "modelmint._tasks.audio",
    "text-classification": "modelmint._tasks.text",
    "object-detection": "modelmint._tasks.detection",
}

_registered: dict[str, Task] = {}

# How each LoadOptions field is spelled on the command line, for messages.
_FLAGS = {"group_by": "--group-by", "reject_dir": "--reject-dir",
          "label_column": "--label-column", "text_column": "--text-column"}


def register_task(task: Task) -> Task:
    """Make ``task`` known by its name (replacing a task of the same name)."""
    _registered[task.name] = task
    return task


def task_names() -> list[str]:
    return sorted({*TASK_MODULES, *_registered})


def get_task(name: str) -> Task:
    if name in _registered:
        return _registered[name]
    if name not in TASK_MODULES:
        raise DataError(f"unknown task {name!r}; expected one of {task_names()}")
    try:
        module = importlib.import_module(TASK_MODULES[name])
    except ModuleNotFoundError as exc:
        raise DataError(f"{name} is not available in this installation ({exc})") from exc
    task: Task = module.TASK
    return register_task(task)


def candidates_for(task: str) -> list[Candidate]:
    """Every candidate of ``task``: baselines first, then the searched families."""
    return sorted(get_task(task).candidates(), key=lambda c: c.kind != "baseline")


def detect_task(path: str | Path) -> Task:
    """The task whose data ``path`` holds most evidence of (e.g. most files of its kind)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such data folder or file")
    scored = [(task.detect(root), task.name, task) for task in _installed()]
    best = max(scored, key=lambda s: (s[0], s[1]))
    if best[0] <= 0:
        expected = "; ".join(f"{task.name}: {task.describe}" for _, _, task in scored)
        raise DataError(f"{root}: found no data of a known task. Expected one of: {expected}")
    return best[2]


def _installed() -> list[Task]:
    """Every task whose module imports here (a task missing an optional library is left out
    of detection; asking for it by name says what is missing)."""
    found = []
    for name in task_names():
        try:
            found.append(get_task(name))
        except DataError:
            continue
    return found


def load_task_data(path: str | Path, options: LoadOptions | None = None,
                   task: str | None = None) -> TaskData:
    """Detect the task (or take ``task``), refuse options it does not honour, then let it load,
    check and split its data."""
    options = options or LoadOptions()
    found = get_task(task) if task else detect_task(path)
    refused = [flag for name, flag in _FLAGS.items()
               if name in options.given() and name not in found.options]
    if refused:
        raise DataError(f"{' and '.join(refused)} do not apply to {found.name} data "
                        f"({found.describe}); leave them out")
    return found.load(Path(path).expanduser(), options)
