"""``mint``: the command line. Every command is a thin shell over the same in-process API."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ._cli_common import command_from, err_console
from ._cli_common import emit_json as _emit_json
from ._cli_common import fail as _fail
from ._cli_convert import convert
from ._cli_serving import models, predict, serve, stats
from ._settings import APP, OPTIMIZE, TRAIN
from .errors import MintError

# Taken before torch is imported (commands import it lazily): --budget covers the whole command.
COMMAND_STARTED = time.monotonic()

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="modelmint: a folder of labelled data → a trained, evaluated, served model.")


def _train(values: dict[str, Any]) -> None:
    # Ctrl-C / SIGINT stops cleanly and leaves a resumable run, even when we were started from
    # a non-interactive shell's background job, which starts children with SIGINT ignored (the
    # web app stops its training jobs with SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ._cli_train import train_command

    train_command(values, COMMAND_STARTED)


app.command()(command_from(
    TRAIN, _train, "train",
    """Search models within --budget (baselines, then pruned fine-tuning trials), evaluate,
    publish the best. --epochs N instead trains the task's fixed recipe once (no search)."""))


@app.command()
def leaderboard(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of mint train.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the leaderboard as JSON.")]
    = False,
) -> None:
    """Print the leaderboard of a model search: every trial, its metric, time, why it stopped."""
    from ._search.leaderboard import load, print_leaderboard

    try:
        board = load(run_dir)
    except MintError as exc:
        _fail(exc)
        return
    if as_json:
        _emit_json(board)
        return
    print_leaderboard(board, Console())


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="Data folder to check.")],
    strict: Annotated[bool, typer.Option(help="Count flagged files as skipped.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the 80/20 split.")] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Report class counts, unreadable files, duplicates, leakage and outliers (for an
    object-detection folder: boxes per class, repaired and dropped boxes, negatives)."""
    from ._data import check_dataset, discover
    from ._tasks.registry import detect_task

    try:
        if detect_task(data).name == "object-detection":
            _check_detection(data, strict, seed, as_json)
            return
        report = check_dataset(discover(data, seed=seed), strict=strict)
    except MintError as exc:
        _fail(exc)
        return
    if as_json:
        _emit_json(report.to_json())
        return
    console = Console()
    table = Table(title=f"{report.layout.root} ({report.layout.split_source})")
    for col in ("class", "train", "val"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in report.layout.classes:
        table.add_row(c, str(report.counts["train"][c]), str(report.counts["val"][c]))
    console.print(table)
    for issue in report.issues:
        colour = "red" if issue.severity == "error" else "yellow"
        console.print(f"[{colour}]{issue.severity}:[/] {issue.path}: {issue.reason}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def _check_detection(data: Path, strict: bool, seed: int, as_json: bool) -> None:
    from ._data.detection_data import load_detection_data

    loaded = load_detection_data(data, seed=seed, strict=strict)
    report = loaded.extra["detection_report"]
    if as_json:
        _emit_json({**report, "split": loaded.split_note, "warnings": loaded.warnings})
        return
    console = Console()
    table = Table(title=f"{report['root']} ({report['format'].upper()}, {loaded.split_note})")
    for col in ("class", "boxes", "images"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in report["classes"]:
        table.add_row(c, str(report["per_class_boxes"][c]), str(report["per_class_images"][c]))
    console.print(table)
    console.print(f"{report['images']} images ({report['train_images']} train, "
                  f"{report['val_images']} val), {report['boxes']} boxes, "
                  f"{report['negatives']} without boxes")
    for warning in loaded.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


# The serving side's commands live in _cli_serving (same _cli_common code, same in-process API).
for _command in (serve, predict, models, stats):
    app.command()(_command)
app.command()(convert)


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="Sample data.")] = Path("../shared/data/hymenoptera"),
    repo: Annotated[Path, typer.Option(help="Model repository.")] = Path("models"),
    budget: Annotated[float, typer.Option(help="Training budget, seconds.")] = 120.0,
    rounds: Annotated[int, typer.Option(help="Timed passes over val/.")] = 5,
) -> None:
    """Train on the sample data, serve it on loopback, classify val/ over HTTP, report."""
    from ._demo import run_demo

    try:
        run_demo(data, repo, budget, rounds, Console())
    except MintError as exc:
        _fail(exc)


def _optimize(values: dict[str, Any]) -> None:
    from ._optimize import optimize as run_optimize
    from ._optimize.report import print_report

    console = err_console if values["json"] else Console()
    try:
        result = run_optimize(values["model_dir"], max_accuracy_drop=values["max_accuracy_drop"],
                              rounds=values["rounds"], iters=values["iters"],
                              include_compile=values["include_compile"],
                              max_images=values["max_items"],
                              say=lambda msg: console.print(f"[dim]{msg}[/]"))
    except MintError as exc:
        _fail(exc)
        return
    print_report(result.report, console)
    if values["json"]:
        _emit_json(result.to_json())


app.command()(command_from(
    OPTIMIZE, _optimize, "optimize",
    "Measure graph passes, INT8 and engines; publish the fastest that keeps accuracy."))


def _web_app(values: dict[str, Any]) -> None:
    from ._app import AppSettings, run_app

    try:
        run_app(AppSettings(**values), Console())
    except MintError as exc:
        _fail(exc)


app.command("app")(command_from(
    APP, _web_app, "app",
    "The web app: projects, upload and label data, train, evaluate, deploy, try, SDK."))


@app.command("profile")
def profile_run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its profile/ folder).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the analysis as JSON.")]
    = False,
) -> None:
    """Analyse a training run's profile: where step time goes, the bottleneck, what to change."""
    from ._profile import analyze, write_report
    from ._profile.commands import print_analysis

    try:
        analysis = analyze(run_dir)
        html = write_report(run_dir)
    except MintError as exc:
        _fail(exc)
        return
    if as_json:
        _emit_json({**analysis.to_json(), "report": str(html)})
        return
    console = Console()
    print_analysis(analysis, console)
    console.print(f"report: {html}")


if __name__ == "__main__":
    app()
