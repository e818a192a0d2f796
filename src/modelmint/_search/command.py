"""``mint train``'s body: options in, the run, the printed report and the ``--json`` line out.

The command line (``cli.py``) only parses the ``mint train`` settings table into a dict and
calls :func:`train_command`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .._cli_common import emit_json, err_console, fail
from ..errors import MintError


def train_command(values: dict[str, Any], started: float) -> None:
    """Run ``mint train`` with ``values``: every setting of the ``train`` table by name
    (``data``, ``name``, ``repo``, ``budget``, ``epochs``, ..., ``resume``, ``json``).
    ``started``: ``time.monotonic()`` when the command began, so ``--budget`` covers start-up."""
    from .._train import TrainOptions
    from .._train import resume as resume_run
    from .._train import train as train_run
    from .._train.evaluate import print_report
    from .run import is_search_run

    as_json = bool(values.get("json"))
    console = err_console if as_json else Console()
    resume: Path | None = values.get("resume")
    data, name, epochs = values.get("data"), values.get("name"), values.get("epochs")
    try:
        if (resume is not None and is_search_run(resume)) or (resume is None and epochs is None):
            _train_search(values, started, console, as_json)
            return
        if resume is not None:
            result = resume_run(resume, console, budget=values.get("budget"), started=started)
        else:
            if data is None or name is None:
                raise MintError("mint train needs a DATA folder and --name (or --resume RUN_DIR)")
            result = train_run(TrainOptions(
                data_root=str(data), name=name, repo=str(values["repo"]),
                runs_dir=str(values["runs_dir"]), budget=values.get("budget"), epochs=epochs,
                seed=values["seed"], strict=values["strict"], profile=values["profile"],
                auto_tune=values["auto_tune"]), console, started=started)
    except MintError as exc:
        fail(exc)
        return
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    print_report(result.report["evaluation"], console)
    console.print(f"[green]published[/] {result.model} version {result.version} "
                  f"(val accuracy {result.val_accuracy:.1%}, {result.train_seconds:.0f}s, "
                  f"{result.epochs} epochs, run {result.run_dir})")
    if as_json:
        emit_json(result.to_json())


def _train_search(values: dict[str, Any], started: float, console: Console,
                  as_json: bool) -> None:
    from .._train.evaluate import print_report
    from .driver import SearchOptions
    from .run import resume_search, search

    resume, data, name = values.get("resume"), values.get("data"), values.get("name")
    budget = values.get("budget")
    if resume is not None:
        result = resume_search(resume, console, budget=budget, started=started)
    else:
        if data is None or name is None:
            raise MintError("mint train needs a DATA folder (or .tsv/.csv file) and --name "
                            "(or --resume RUN_DIR)")
        reject_dir = values.get("reject_dir")
        opts = SearchOptions(
            data=str(data), name=name, repo=str(values["repo"]),
            runs_dir=str(values["runs_dir"]), budget=600.0 if budget is None else budget,
            seed=values["seed"], group_by=values.get("group_by"),
            reject_dir=None if reject_dir is None else str(reject_dir),
            label_column=values.get("label_column"), text_column=values.get("text_column"),
            storage=values.get("storage"), worker=values["worker"], ray=values.get("ray"),
            max_trials=values.get("max_trials"), candidates=values.get("candidates") or None,
            profile=values["profile"], auto_tune=values["auto_tune"])
        result = search(opts, console, started=started)
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    if result.get("version") is not None:
        print_report(result["report"]["evaluation"], console)
        console.print(f"[green]published[/] {result['model']} version {result['version']} "
                      f"(winner {result['winner']['candidate']}, val accuracy "
                      f"{result['val_accuracy']:.1%}, {result['seconds']:.0f}s, "
                      f"{len(result['trials'])} trials, run {result['run_dir']})")
    if as_json:
        emit_json({k: v for k, v in result.items() if k != "report"})
