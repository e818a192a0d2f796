"""``mint``: the command line. Every command is a thin shell over the same in-process API."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import MintError, TrainingInterrupted

# Taken before torch is imported (commands import it lazily): --budget covers the whole command.
COMMAND_STARTED = time.monotonic()

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="modelmint: a folder of labelled data → a trained, evaluated, served model.")
err_console = Console(stderr=True)


def _fail(exc: MintError) -> None:
    err_console.print(f"[bold red]error:[/] {exc.message}")
    raise typer.Exit(130 if isinstance(exc, TrainingInterrupted) else 2)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


@app.command()
def train(
    data: Annotated[Path | None, typer.Argument(
        help="Data folder: <class>/* or train|val/<class>/*")] = None,
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
) -> None:
    """Check the data, train with transfer learning, evaluate, publish a new version."""
    from .train import TrainOptions
    from .train import resume as resume_run
    from .train import train as train_run
    from .train.evaluate import print_report

    console = err_console if as_json else Console()
    try:
        if resume is not None:
            result = resume_run(resume, console, budget=budget, started=COMMAND_STARTED)
        else:
            if data is None or name is None:
                raise MintError("mint train needs a DATA folder and --name (or --resume RUN_DIR)")
            if budget is None and epochs is None:
                budget = 600.0
            result = train_run(TrainOptions(
                data_root=str(data), name=name, repo=str(repo), runs_dir=str(runs_dir),
                budget=budget, epochs=epochs, seed=seed, strict=strict), console,
                started=COMMAND_STARTED)
    except MintError as exc:
        _fail(exc)
        return
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    print_report(result.report["evaluation"], console)
    console.print(f"[green]published[/] {result.model} version {result.version} "
                  f"(val accuracy {result.val_accuracy:.1%}, {result.train_seconds:.0f}s, "
                  f"{result.epochs} epochs, run {result.run_dir})")
    if as_json:
        _emit_json(result.to_json())


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="Data folder to check.")],
    strict: Annotated[bool, typer.Option(help="Count flagged files as skipped.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the 80/20 split.")] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Report class counts, unreadable files, duplicates, leakage and outliers."""
    from .data import check_dataset, discover

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


@app.command()
def serve(
    repo: Annotated[Path, typer.Argument(help="Model repository to serve.")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="KServe V2 HTTP port (0: any free port).")]
    = 8000,
    grpc_port: Annotated[int, typer.Option(
        help="KServe V2 gRPC port (0: any free port; -1: no gRPC).", min=-1)] = 8001,
    metrics_port: Annotated[int, typer.Option(
        help="Prometheus /metrics port (0: any free port; -1: none).", min=-1)] = 8002,
    max_request_bytes: Annotated[int, typer.Option(
        help="Largest request body (HTTP) or message (gRPC) accepted.")] = 16 * 1024 * 1024,
    poll: Annotated[float, typer.Option(
        help="Re-read the repository every SECONDS and hot-update changed models (0: only "
             "via POST /v2/repository/models/NAME/load).", min=0)] = 0.0,
) -> None:
    """Serve the versions each model's config.json selects over KServe V2 HTTP and gRPC."""
    from .serve import run_server

    try:
        run_server(repo, host=host, http_port=http_port, max_request_bytes=max_request_bytes,
                   grpc_port=None if grpc_port < 0 else grpc_port,
                   metrics_port=None if metrics_port < 0 else metrics_port,
                   poll_interval_s=poll)
    except MintError as exc:
        _fail(exc)


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    model: Annotated[str, typer.Option(help="Model name.")],
    url: Annotated[str | None, typer.Option(help="Server URL, e.g. http://127.0.0.1:8000")]
    = None,
    repo: Annotated[Path | None, typer.Option(help="Predict in-process from a repository.")]
    = None,
    version: Annotated[int | None, typer.Option(help="Model version (default: latest).")] = None,
    top_k: Annotated[int, typer.Option(help="How many labels to return per file.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Classify image files through a server (--url) or a repository (--repo)."""
    from .client import predict as run_predict
    from .client import print_predictions

    if (url is None) == (repo is None):
        _fail(MintError("mint predict needs exactly one of --url or --repo"))
    try:
        preds = run_predict(files, model, url=url, repo=repo, version=version, top_k=top_k)
    except MintError as exc:
        _fail(exc)
        return
    if as_json:
        for p in preds:
            _emit_json(p.to_json())
    else:
        print_predictions(preds, Console())


@app.command()
def models(
    repo: Annotated[Path, typer.Argument(help="Model repository.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the models and versions in a repository."""
    from .repository import require_repo_dir

    try:
        store = require_repo_dir(repo)
        rows: list[dict[str, Any]] = []
        for name in store.models():
            for ref in store.versions(name):
                meta = ref.metadata()
                rows.append({"model": name, "version": ref.version,
                             "architecture": meta.architecture, "labels": meta.labels,
                             "val_accuracy": meta.metrics.get("val_accuracy"),
                             "created": meta.created, "path": str(ref.path)})
    except MintError as exc:
        _fail(exc)
        return
    if as_json:
        _emit_json(rows)
        return
    table = Table(title=str(repo))
    for col in ("model", "version", "architecture", "classes", "val accuracy", "created"):
        table.add_column(col)
    for r in rows:
        acc = r["val_accuracy"]
        table.add_row(r["model"], str(r["version"]), r["architecture"], str(len(r["labels"])),
                      "-" if acc is None else f"{acc:.1%}", r["created"])
    Console().print(table)


@app.command()
def stats(
    url: Annotated[str, typer.Argument(help="Server URL, e.g. http://127.0.0.1:8000")],
    model: Annotated[list[str] | None, typer.Option(
        help="Model to show (repeatable; default: every model the server lists).")] = None,
    watch: Annotated[float | None, typer.Option(
        help="Refresh every SECONDS until Ctrl-C.", min=0.1)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Live p50/p90/p99/p999/max latency per model and version of a running server."""
    from rich.live import Live

    from .live_stats import fetch_stats, stats_table

    try:
        rows = fetch_stats(url, model)
        if as_json:
            _emit_json(rows)
            return
        console = Console()
        if watch is None or not console.is_terminal:  # piped: one table per refresh
            while True:
                console.print(stats_table(rows, url))
                if watch is None:
                    return
                time.sleep(watch)
                rows = fetch_stats(url, model)
        with Live(stats_table(rows, url), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(stats_table(fetch_stats(url, model), url), refresh=True)
    except MintError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="Sample data.")] = Path("../shared/data/hymenoptera"),
    repo: Annotated[Path, typer.Option(help="Model repository.")] = Path("models"),
    budget: Annotated[float, typer.Option(help="Training budget, seconds.")] = 120.0,
    rounds: Annotated[int, typer.Option(help="Timed passes over val/.")] = 5,
) -> None:
    """Train on the sample data, serve it on loopback, classify val/ over HTTP, report."""
    from .demo import run_demo

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
    from .optimize import optimize as run_optimize
    from .optimize.report import print_report

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


if __name__ == "__main__":
    app()
