"""The public Python API behind ``modelmint``'s ``__all__``: each function imports its part of
the package when called, so ``import modelmint`` stays light (no torch, no optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client import Prediction, TensorPrediction
    from ._optimize import OptimizeResult
    from ._search.run import TrainResult
    from ._serve.detection import DetectionPrediction


def train(data: str | Path, name: str, *, repo: str | Path = "models",
          budget: float | None = None, epochs: int | None = None, quiet: bool = False,
          **options: Any) -> TrainResult:
    """Train a model on ``data`` (a folder or a .tsv/.csv file) and publish it as the next
    version of ``name`` in ``repo``: a budgeted search, or with ``epochs`` the fixed recipe.
    ``options`` are the other settings of ``mint train`` by name (``seed``, ``strict``,
    ``group_by``, ``reject_dir``, ``runs_dir``, ``candidates``, ...)."""
    from rich.console import Console

    from ._search.options import TrainOptions
    from ._search.run import train as run

    opts = TrainOptions(data=str(data), name=name, repo=str(repo), budget=budget,
                        epochs=epochs, **options)
    return run(opts, Console(quiet=quiet, stderr=True))


def predict(paths: list[Path], model: str, *, url: str | None = None,
            repo: str | Path | None = None, version: int | None = None,
            top_k: int = 3, score_threshold: float | None = None
            ) -> list[Prediction] | list[TensorPrediction] | list[DetectionPrediction]:
    """Predict every file under ``paths`` with ``model``, through a running server (``url``)
    or in-process from a repository (``repo``): top-k labels for a classifier, labelled boxes
    per image for a detector (at least ``score_threshold``, else the model's default), output
    tensors for a model that takes ``.npy`` tensors."""
    from ._client import predict_files

    return predict_files([Path(p) for p in paths], model, url=url,
                         repo=None if repo is None else Path(repo), version=version,
                         top_k=top_k, score_threshold=score_threshold)


def serve(repo: str | Path, **settings: Any) -> None:
    """Serve ``repo`` over KServe V2 HTTP and gRPC until SIGINT/SIGTERM; ``settings`` are
    :func:`modelmint._serve.run_server`'s (``host``, ``http_port``, ``grpc_port``, ...)."""
    from ._serve import run_server

    run_server(repo, **settings)


def optimize(path: str | Path, **settings: Any) -> OptimizeResult:
    """Publish a faster version of ``REPO/<model>[/<version>]`` if one keeps its accuracy."""
    from ._optimize import optimize as run

    return run(path, **settings)
