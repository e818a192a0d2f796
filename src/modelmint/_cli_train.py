"""``mint train``'s body: options in, the run, the printed report and the ``--json`` line out.

The command line (``cli.py``) only parses the ``mint train`` settings table into a dict and
calls :func:`train_command`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ._cli_common import emit_json, err_console, fail
from ._search.options import TrainOptions
from ._search.run import TrainResult
from .errors import MintError

# Settings of the ``train`` table that steer the command rather than the run.
_COMMAND_ONLY = ("resume", "json")


def options_from(values: dict[str, Any]) -> TrainOptions:
    """The run's options from the parsed settings; ``mint train`` needs DATA and --name."""
    data, name = values.get("data"), values.get("name")
    if data is None or name is None:
        raise MintError("mint train needs a DATA folder (or .tsv/.csv file) and --name "
                        "(or --resume RUN_DIR)")
    kept = {k: v for k, v in values.items() if k not in _COMMAND_ONLY}
    for key in ("data", "repo", "runs_dir", "reject_dir"):  # paths travel as strings
        if kept.get(key) is not None:
            kept[key] = str(kept[key])
    kept["candidates"] = kept.get("candidates") or None
    return TrainOptions(**kept)


def train_command(values: dict[str, Any], started: float) -> None:
    """Run ``mint train`` with ``values``: every setting of the ``train`` table by name
    (``data``, ``name``, ``repo``, ``budget``, ``epochs``, ..., ``resume``, ``json``).
    ``started``: ``time.monotonic()`` when the command began, so ``--budget`` covers start-up."""
    from ._search.run import resume, train
    from ._tasks.registry import get_task

    as_json = bool(values.get("json"))
    console = err_console if as_json else Console()
    resume_dir: Path | None = values.get("resume")
    try:
        if resume_dir is not None:
            _refuse_with_resume(values)
            result = resume(resume_dir, console, budget=values.get("budget"), started=started)
        else:
            result = train(options_from(values), console, started=started)
    except MintError as exc:
        fail(exc)
        return
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if result.version is not None:
        get_task(result.task).print_report(result.report["evaluation"], console)
        console.print(f"[green]published[/] {result.model} version {result.version} "
                      f"({_score(result)}, {result.train_seconds:.0f}s, "
                      f"{len(result.trials)} trial(s), run {result.run_dir})")
    if as_json:
        emit_json(result.to_json())


def _score(result: TrainResult) -> str:
    winner = result.winner or {}
    score = winner.get("score")
    text = f"winner {winner.get('candidate', '?')}, val {result.metric} "
    return text + ("?" if score is None else f"{score:.3f}")


def _refuse_with_resume(values: dict[str, Any]) -> None:
    """A resumed run keeps its saved options; only --budget may change. Anything else given
    would be ignored, so it is refused."""
    from ._settings import TRAIN

    defaults = {s.name: s.default for s in TRAIN}
    changed = [name for name, value in values.items()
               if name not in ("resume", "json", "budget") and name in defaults
               and value not in (defaults[name], None, [])]
    if changed:
        flags = ", ".join("DATA" if n == "data" else "--" + n.replace("_", "-")
                          for n in changed)
        raise MintError(f"--resume continues a run with the options it was started with; "
                        f"{flags} cannot change now (only --budget can). Leave them out")
