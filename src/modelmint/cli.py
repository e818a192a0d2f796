"""``mint``: the command line. Every command is a thin shell over the same in-process API."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ._cli_common import emit_json as _emit_json
from ._cli_common import err_console
from ._cli_common import fail as _fail
from ._cli_serving import models, predict, serve, stats
from .errors import MintError

# Taken before torch is imported (commands import it lazily): --budget covers the whole command.
COMMAND_STARTED = time.monotonic()

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="modelmint: a folder of labelled data → a trained, evaluated, served model.")


@app.command()
def train(
    data: Annotated[Path | None, typer.Argument(
        help="Data folder (<class>/* or train|val/<class>/*; images or .wav) or a .tsv/.csv "
             "file (text)")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the repository.")] = None,
    repo: Annotated[Path, typer.Option(help="Model repository.")] = Path("models"),
    budget: Annotated[float | None, typer.Option(
        help="Wall-clock ceiling in seconds for the whole command.")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Fixed number of fine-tuning epochs instead of a budget.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and init.")] = 0,
    strict: Annotated[bool, typer.Option(help="Skip every file the data check flags.")] = False,
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run directory.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON object.")] = False,
    group_by: Annotated[str | None, typer.Option(
        help="Regex over file names (first group, e.g. '_(\\[a-z]+)_'): keep each group on one "
             "side of the train/val split.")] = None,
    reject_dir: Annotated[Path | None, typer.Option(
        help="Folder of out-of-domain examples: adds an 'other' class.")] = None,
    label_column: Annotated[str | None, typer.Option(
        help="Text tasks: the label column (default: auto-detected).")] = None,
    text_column: Annotated[str | None, typer.Option(
        help="Text tasks: the text column (default: auto-detected).")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Study database shared by workers, e.g. postgresql://user@host/db "
             "(default: SQLite in the run directory).")] = None,
    worker: Annotated[bool, typer.Option(
        help="Only run trials of the shared --storage study; publish nothing.")] = False,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Run trials on this Ray cluster (ADDRESS, e.g. 127.0.0.1:6379).")] = None,
    max_trials: Annotated[int | None, typer.Option(
        help="Stop the search after this many trials (default: only the budget).")] = None,
    candidates: Annotated[list[str] | None, typer.Option(
        "--candidates", help="Only these candidates (glob over names, e.g. 'mobilenet_v2/*'; "
                             "repeatable).")] = None,
    profile: Annotated[bool, typer.Option(
        help="Profile training: torch.profiler window, advice, RUN/profile/report.html.")]
    = False,
    auto_tune: Annotated[bool, typer.Option(
        help="Tune the image input pipeline on this data first (docs/profile.md).")] = False,
) -> None:
    """Search models within --budget (baselines, then pruned fine-tuning trials), evaluate,
    publish the best. --epochs N instead trains one fixed MobileNetV2 recipe (no search)."""
    # Ctrl-C / SIGINT stops cleanly and leaves a resumable run, even when we were started from
    # a non-interactive shell's background job, which starts children with SIGINT ignored (the
    # web app stops its training jobs with SIGINT).
    values = dict(locals())
    values["json"] = values.pop("as_json")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ._search.command import train_command

    train_command(values, COMMAND_STARTED)


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
    """Report class counts, unreadable files, duplicates, leakage and outliers."""
    from ._data import check_dataset, discover

    try:
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


# The serving side's commands live in _cli_serving (same helpers, same in-process API).
for _command in (serve, predict, models, stats):
    app.command()(_command)


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


@app.command()
def optimize(
    model_dir: Annotated[Path, typer.Argument(
        help="REPO/<model> (its latest version) or REPO/<model>/<version>.")],
    target: Annotated[str, typer.Option(help="Hardware to optimize for (cpu).")] = "cpu",
    max_accuracy_drop: Annotated[float, typer.Option(
        help="Largest val top-1 drop, in points, a lower precision may cost.")] = 1.0,
    rounds: Annotated[int, typer.Option(help="Interleaved timing rounds.", min=1)] = 5,
    iters: Annotated[int, typer.Option(help="Timed calls per candidate, batch and round.",
                                       min=1)] = 5,
    include_compile: Annotated[bool, typer.Option(
        help="Also measure torch.compile (slow to compile).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON object.")] = False,
) -> None:
    """Measure graph passes, INT8 and engines; publish the fastest that keeps accuracy."""
    from ._optimize import optimize as run_optimize
    from ._optimize.report import print_report

    console = err_console if as_json else Console()
    try:
        result = run_optimize(model_dir, target=target, max_accuracy_drop=max_accuracy_drop,
                              rounds=rounds, iters=iters, include_compile=include_compile,
                              say=lambda msg: console.print(f"[dim]{msg}[/]"))
    except MintError as exc:
        _fail(exc)
        return
    print_report(result.report, console)
    if as_json:
        _emit_json(result.to_json())


@app.command("app")
def web_app(
    data_dir: Annotated[Path | None, typer.Option(help="Where projects, uploads, runs, models "
                                                  "and the SQLite database live "
                                                  "(default ~/.modelmint).")] = None,
    database: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite in --data-dir).")]
    = None,
    host: Annotated[str, typer.Option(
        help="Address to bind; anything but loopback requires the access token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port of the app.")] = 8080,
    serve_url: Annotated[str | None, typer.Option(
        help="Use this running `mint serve DATA_DIR/serving` instead of starting one.")] = None,
    upload_max_bytes: Annotated[int, typer.Option(help="Largest single upload, bytes.")]
    = 2 * 1024**3,
    zip_max_entries: Annotated[int, typer.Option(help="Most entries in one zip.")] = 100_000,
    zip_max_uncompressed: Annotated[int, typer.Option(
        help="Largest total uncompressed size of one zip, bytes.")] = 10 * 1024**3,
    zip_max_ratio: Annotated[float, typer.Option(
        help="Largest compression ratio of a zip or an entry (zip bomb guard).")] = 100.0,
) -> None:
    """The web app: projects, upload and label data, train, evaluate, deploy, try, SDK."""
    from ._app import AppSettings, run_app

    settings = AppSettings(host=host, port=port, database=database, serve_url=serve_url,
                           upload_max_bytes=upload_max_bytes, zip_max_entries=zip_max_entries,
                           zip_max_uncompressed=zip_max_uncompressed,
                           zip_max_ratio=zip_max_ratio)
    if data_dir is not None:
        settings.data_dir = data_dir
    try:
        run_app(settings, Console())
    except MintError as exc:
        _fail(exc)



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
