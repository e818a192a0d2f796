"""Classify image or sound files, or text strings, with a served model (over V2 HTTP) or
straight from a repository.

Both paths send the same V2 request (``image``, ``audio`` — chosen by the file extension — or
``text`` input; ``classification: k`` output) through
the same :class:`~modelmint._serve.DataPlane` semantics; the repository path simply runs that
data plane in-process. One unreadable or undecodable file is reported in its
:attr:`Prediction.error` and never fails the rest.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import InvalidInput, MintError, ModelNotReady, NotFound, PayloadTooLarge

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                              ".tiff"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})
MAX_FILES_PER_REQUEST = 16
# Base64 inflates by 4/3; staying near 8 MiB of files keeps a request well inside the server's
# default 16 MiB body limit. A single larger file is still sent, alone.
MAX_BYTES_PER_REQUEST = 8 * 1024 * 1024
_STATUS_ERRORS: dict[int, type[MintError]] = {400: InvalidInput, 404: NotFound,
                                              413: PayloadTooLarge, 503: ModelNotReady}

TopK = list[tuple[str, float]]


@dataclass
class Prediction:
    file: str
    label: str | None = None
    score: float | None = None
    top_k: TopK = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "label": self.label, "score": self.score,
                               "top_k": [{"label": lb, "score": s} for lb, s in self.top_k]}
        if self.error is not None:
            out["error"] = self.error
        return out


def find_images(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Expand folders (recursively, image extensions, hidden entries skipped) and return
    (image files, paths that do not exist). Files named explicitly are kept whatever their
    extension: the server decides whether they are images."""
    found: list[Path] = []
    missing: list[Path] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in sorted(files) if not f.startswith(".")
                             and Path(f).suffix.lower() in IMAGE_EXTENSIONS | AUDIO_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            missing.append(path)
    return found, missing


def parse_classification(item: bytes | str) -> tuple[str, float]:
    """One Triton classification element ``"score:index:label"`` -> (label, score)."""
    text = item.decode("utf-8") if isinstance(item, bytes) else item
    score, index, *label = text.split(":", 2)
    return (label[0] if label else index), float(score)


def input_name(path: Path) -> str:
    """The raw input a file goes to: ``audio`` for sound files, else ``image``."""
    return "audio" if path.suffix.lower() in AUDIO_EXTENSIONS else "image"


class _Backend(Protocol):
    def classify(self, images: list[bytes], k: int, name: str = "image") -> list[TopK]: ...

    def close(self) -> None: ...


class _HttpBackend:
    def __init__(self, url: str, model: str, version: int | None, timeout: float) -> None:
        base = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
        path = f"/v2/models/{quote(model, safe='')}"
        self.path = path + (f"/versions/{version}" if version is not None else "") + "/infer"
        self.http = httpx.Client(base_url=base, timeout=timeout)

    def classify(self, images: list[bytes], k: int, name: str = "image") -> list[TopK]:
        # JSON carries text as strings and encoded files as base64 (the server's BASE64_INPUTS).
        data = ([b.decode("utf-8") for b in images] if name == "text"
                else [base64.b64encode(b).decode("ascii") for b in images])
        body = {
            "inputs": [{"name": name, "datatype": "BYTES", "shape": [len(images)],
                        "data": data}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": k}}],
        }
        try:
            response = self.http.post(self.path, json=body)
        except httpx.HTTPError as exc:
            raise MintError(f"cannot reach the server at {self.http.base_url}: {exc}") from exc
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if response.status_code != 200:
            message = doc.get("error") if isinstance(doc, dict) else None
            error = _STATUS_ERRORS.get(response.status_code, MintError)
            raise error(str(message or f"HTTP {response.status_code}: {response.text[:200]}"))
        try:
            output = next(o for o in doc["outputs"] if o["name"] == "probabilities")
            rows, cols = output["shape"]
            flat = output["data"]
            return [[parse_classification(x) for x in flat[r * cols:(r + 1) * cols]]
                    for r in range(rows)]
        except (KeyError, TypeError, ValueError, StopIteration) as exc:
            raise MintError(f"unexpected response from {self.http.base_url}: {exc!r}") from exc

    def close(self) -> None:
        self.http.close()


class _LocalBackend:
    def __init__(self, repo: Path, model: str, version: int | None) -> None:
        # Imported here: the HTTP path needs neither onnxruntime nor the model files.
        from ._serve.dataplane import DataPlane

        self.model, self.version = model, version
        self.dataplane = DataPlane(repo, models=())
        self.dataplane.load_model(model, version)

    def classify(self, images: list[bytes], k: int, name: str = "image") -> list[TopK]:
        from ._serve.types import InferInput, InferRequest, RequestedOutput

        data = np.empty(len(images), dtype=np.object_)
        data[:] = images
        request = InferRequest(
            inputs=[InferInput(name, "BYTES", [len(images)], data)],
            outputs=[RequestedOutput("probabilities", {"classification": k})])
        result = self.dataplane.infer_sync(self.model, self.version, request)
        table = result.output("probabilities").data
        return [[parse_classification(x) for x in row] for row in table]

    def close(self) -> None:
        self.dataplane.close()


def predict(paths: list[Path], model: str, *, url: str | None = None, repo: Path | None = None,
            version: int | None = None, top_k: int = 3,
            timeout: float = 120.0) -> list[Prediction]:
    """Top-``top_k`` labels for every image under ``paths``, in discovery order.

    Exactly one of ``url`` (a running server) or ``repo`` (in-process) must be given. Errors
    that concern one file go into its Prediction; errors that concern every file (unknown
    model, unreachable server) raise.
    """
    if (url is None) == (repo is None):
        raise InvalidInput("give exactly one of url (a running server) or repo (a model "
                           "repository to run in-process)")
    if top_k < 1:
        raise InvalidInput(f"top_k must be >= 1, got {top_k}")
    files, missing = find_images([Path(p) for p in paths])
    backend: _Backend = (_HttpBackend(url, model, version, timeout) if url is not None
                         else _LocalBackend(Path(repo or "."), model, version))
    results: dict[Path, Prediction] = {
        p: Prediction(str(p), error="no such file or directory") for p in missing}
    try:
        for batch in _batches(files):
            for path, pred in zip(batch, _predict_batch(backend, batch, top_k), strict=True):
                results[path] = pred
    finally:
        backend.close()
    return [results[p] for p in [*missing, *files]]


def predict_texts(texts: list[str], model: str, *, url: str | None = None,
                  repo: Path | None = None, version: int | None = None, top_k: int = 3,
                  timeout: float = 120.0) -> list[Prediction]:
    """Top-``top_k`` labels for every text (a text-classification model's ``text`` input);
    ``Prediction.file`` holds the text."""
    if (url is None) == (repo is None):
        raise InvalidInput("give exactly one of url (a running server) or repo (a model "
                           "repository to run in-process)")
    backend: _Backend = (_HttpBackend(url, model, version, timeout) if url is not None
                         else _LocalBackend(Path(repo or "."), model, version))
    preds = []
    try:
        for start in range(0, len(texts), MAX_FILES_PER_REQUEST):
            chunk = texts[start:start + MAX_FILES_PER_REQUEST]
            rows = backend.classify([t.encode("utf-8") for t in chunk], top_k, "text")
            preds += [Prediction(t, row[0][0], row[0][1], row) for t, row in
                      zip(chunk, rows, strict=True)]
    finally:
        backend.close()
    return preds


def _batches(files: list[Path]) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for path in files:
        try:
            length = path.stat().st_size
        except OSError:
            length = 0
        if batch and (len(batch) == MAX_FILES_PER_REQUEST or size + length > MAX_BYTES_PER_REQUEST):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += length
    if batch:
        yield batch


def _predict_batch(backend: _Backend, batch: list[Path], k: int) -> list[Prediction]:
    preds: dict[Path, Prediction] = {}
    readable: list[tuple[Path, bytes]] = []
    for path in batch:
        try:
            readable.append((path, path.read_bytes()))
        except OSError as exc:
            preds[path] = Prediction(str(path), error=f"cannot read: {exc.strerror or exc}")
    if readable:
        try:
            rows = backend.classify([blob for _, blob in readable], k,
                                    input_name(readable[0][0]))
        except InvalidInput as exc:
            if len(readable) == 1:
                preds[readable[0][0]] = Prediction(str(readable[0][0]), error=str(exc))
            else:
                # One bad file fails its whole request; retry one by one so only it is reported.
                for path, _ in readable:
                    preds[path] = _predict_batch(backend, [path], k)[0]
        else:
            for (path, _), row in zip(readable, rows, strict=True):
                label, score = row[0]
                preds[path] = Prediction(str(path), label, score, row)
    return [preds[p] for p in batch]


def print_predictions(preds: list[Prediction], console: Console | None = None) -> None:
    """A table: file, top label and score, the other top-k, or the error in red."""
    console = console or Console()
    table = Table(show_header=True, header_style="bold")
    table.add_column("File", overflow="fold")
    table.add_column("Label")
    table.add_column("Score", justify="right")
    table.add_column("Top-k")
    for p in preds:
        if p.error is not None:
            table.add_row(escape(p.file), "[red]error[/red]", "", f"[red]{escape(p.error)}[/red]")
        else:
            others = ", ".join(f"{escape(lb)} {s:.3f}" for lb, s in p.top_k)
            table.add_row(escape(p.file), escape(p.label or ""), f"{p.score or 0.0:.3f}", others)
    console.print(table)
