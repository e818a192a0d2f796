"""``mint serve``, ``predict``, ``models``, ``stats``: the serving side of the command line
(registered on the app by :mod:`modelmint.cli`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from ._cli_common import command_from
from ._cli_common import emit_json as _emit_json
from ._cli_common import fail as _fail
from ._settings import DEFAULT_HTTP_PORT, SERVE
from .errors import MintError

if TYPE_CHECKING:
    from ._client import Prediction, TensorPrediction


def _serve(values: dict[str, Any]) -> None:
    from ._serve import run_server

    grpc_port, metrics_port = values["grpc_port"], values["metrics_port"]
    if values["ray"] is not None:  # the same data plane as Ray Serve replicas
        import sys

        from ._serve.auth import access_policy
        from ._serve.ray_serve import ReplicaOptions, serve_on_ray, shared_location

        try:
            policy, created = access_policy(
                values["host"], values["token_file"],
                require_token_for_inference=values["require_token_for_inference"],
                allowed_hosts=values["allowed_host"] or (),
                insecure_no_token=values["insecure_no_token"])
            if created:  # shown once; afterwards it is only in the 0600 file
                print(f"access token (also in {values['token_file']}): {policy.token}",
                      file=sys.stderr, flush=True)
            options = ReplicaOptions(shared_location(values["repo"]), policy,
                                     values["max_request_bytes"], values["read_timeout"],
                                     values["decode_memory"], values["decode_threads"])
            serve_on_ray(options, values["ray"], values["replicas"], host=values["host"],
                         http_port=values["http_port"],
                         grpc_port=None if grpc_port < 0 else grpc_port,
                         poll_interval_s=values["poll"])
        except MintError as exc:
            _fail(exc)
        return
    try:
        run_server(values["repo"], host=values["host"], http_port=values["http_port"],
                   max_request_bytes=values["max_request_bytes"],
                   grpc_port=None if grpc_port < 0 else grpc_port,
                   metrics_port=None if metrics_port < 0 else metrics_port,
                   poll_interval_s=values["poll"], token_file=values["token_file"],
                   require_token_for_inference=values["require_token_for_inference"],
                   insecure_no_token=values["insecure_no_token"],
                   allowed_hosts=values["allowed_host"] or (),
                   read_timeout_s=values["read_timeout"],
                   decode_memory=values["decode_memory"],
                   decode_threads=values["decode_threads"], log_level=values["log_level"])
    except MintError as exc:
        _fail(exc)


serve = command_from(
    SERVE, _serve, "serve",
    "Serve the versions each model's config.json selects over KServe V2 HTTP and gRPC.")


def predict(
    files: Annotated[list[Path] | None, typer.Argument(
        help="Image or sound (.wav) files, or folders.")] = None,
    model: Annotated[str, typer.Option(help="Model name.")] = "",
    text: Annotated[list[str] | None, typer.Option(
        "--text", help="A text to classify (repeatable), for text models.")] = None,
    url: Annotated[str | None, typer.Option(
        help=f"Server URL, e.g. http://127.0.0.1:{DEFAULT_HTTP_PORT}")]
    = None,
    repo: Annotated[Path | None, typer.Option(help="Predict in-process from a repository.")]
    = None,
    version: Annotated[int | None, typer.Option(help="Model version (default: latest).")] = None,
    top_k: Annotated[int, typer.Option(help="How many labels to return per file.")] = 3,
    score_threshold: Annotated[float | None, typer.Option(
        help="Detectors: the lowest score of a box shown (default: the model's).")] = None,
    save_dir: Annotated[Path | None, typer.Option(
        help="Detectors: write annotated copies of the images (boxes and labels) here.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Classify image or sound files, or --text strings, through a server (--url) or a
    repository (--repo); for a detector, print each image's boxes (label, score, x1 y1 x2 y2 in
    pixels); for a model that takes tensors only, print its outputs for each .npy file (one
    item or a batch)."""
    from ._client import predict_files as run_predict
    from ._client import predict_texts, print_predictions
    from ._serve.detection import DetectionPrediction, save_annotated

    if (url is None) == (repo is None):
        _fail(MintError("mint predict needs exactly one of --url or --repo"))
    if not model or bool(files) == bool(text):
        _fail(MintError("mint predict needs --model and either files or --text (not both)"))
    try:
        preds = (predict_texts(text or [], model, url=url, repo=repo, version=version,
                               top_k=top_k) if text else
                 run_predict(files or [], model, url=url, repo=repo, version=version,
                             top_k=top_k, score_threshold=score_threshold))
        detections = [p for p in preds if isinstance(p, DetectionPrediction)]
        if (save_dir is not None or score_threshold is not None) and len(detections) != len(
                preds):
            raise MintError(f"--save-dir and --score-threshold apply to detectors; model "
                            f"{model!r} is not one")
        if save_dir is not None:
            save_annotated(detections, save_dir)
    except MintError as exc:
        _fail(exc)
        return
    if as_json:
        for p in preds:
            _emit_json(p.to_json())
    elif detections:
        _print_detections(detections, Console())
    else:  # no detector: classifications or tensor outputs
        print_predictions(cast("list[Prediction] | list[TensorPrediction]", preds), Console())


def _print_detections(preds: list[Any], console: Console) -> None:
    """A table: one row per box (file, label, score, x1 y1 x2 y2), or the file's error in
    red, or that it has no detections."""
    from rich.markup import escape

    table = Table(show_header=True, header_style="bold")
    table.add_column("File", overflow="fold")
    for column in ("Label", "Score", "Box (x1, y1, x2, y2)"):
        table.add_column(column)
    for pred in preds:
        if pred.error is not None or not pred.detections:
            why = f"[red]{escape(pred.error)}[/red]" if pred.error else "no detections"
            table.add_row(escape(pred.file), "[red]error[/red]" if pred.error else "", "", why)
        for det in pred.detections:
            table.add_row(escape(pred.file), escape(det.label), f"{det.score:.3f}",
                          ", ".join(f"{v:.1f}" for v in det.box))
    console.print(table)


def models(
    repo: Annotated[str, typer.Argument(help="Model repository: a folder or s3://BUCKET/PREFIX.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the models and versions in a repository."""
    from ._repository import require_repo_dir

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


def stats(
    url: Annotated[str, typer.Argument(
        help=f"Server URL, e.g. http://127.0.0.1:{DEFAULT_HTTP_PORT}")],
    model: Annotated[list[str] | None, typer.Option(
        help="Model to show (repeatable; default: every model the server lists).")] = None,
    watch: Annotated[float | None, typer.Option(
        help="Refresh every SECONDS until Ctrl-C.", min=0.1)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Live p50/p90/p99/p999/max latency per model and version of a running server."""
    from rich.live import Live

    from ._live_stats import fetch_stats, stats_table

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
