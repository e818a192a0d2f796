"""Classify image or sound files, or text strings, with a served model (over V2 HTTP) or
straight from a repository; find objects in images with a detector (labelled boxes, optionally
drawn onto annotated copies); run ``.npy`` arrays through a model that takes tensors only.

Both paths send the same V2 request objects (:mod:`modelmint._serve.v2client`: ``image``,
``audio`` — chosen by the file extension — or ``text`` input with ``classification: k``, or the
FP32 ``input``) with the same :class:`~modelmint._serve.DataPlane` semantics; the repository
path simply runs that data plane in-process. One unreadable or undecodable file is reported in
its :attr:`Prediction.error` and never fails the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._serve.detection import (
    LABELS_PARAMETER,
    DetectionPrediction,
    detection_outputs,
    detection_request,
    read_detections,
)
from ._serve.types import InferRequest, InferResponse
from ._serve.v2client import (
    V2Client,
    bytes_request,
    classifications,
    encoded_input,
    tensor_request,
)
from ._tensor_names import AUDIO_INPUT, IMAGE_INPUT, SCORE_THRESHOLD, TENSOR_INPUT, TEXT_INPUT
from .errors import InvalidInput

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                              ".tiff"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})
ARRAY_EXTENSIONS = frozenset({".npy"})
MAX_FILES_PER_REQUEST = 16
# Base64 inflates by 4/3; staying near 8 MiB of files keeps a request well inside the server's
# default 16 MiB body limit. A single larger file is still sent, alone.
MAX_BYTES_PER_REQUEST = 8 * 1024 * 1024

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


@dataclass
class TensorPrediction:
    """A tensor model's outputs for one ``.npy`` file: without the batch axis when the file
    held one item, with it when the file held a batch."""

    file: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file,
                               "outputs": {n: _jsonable(a) for n, a in self.outputs.items()}}
        if self.error is not None:
            out["error"] = self.error
        return out


def find_images(paths: list[Path], extensions: frozenset[str] = IMAGE_EXTENSIONS |
                AUDIO_EXTENSIONS) -> tuple[list[Path], list[Path]]:
    """Expand folders (recursively, files with ``extensions``, hidden entries skipped) and
    return (files, paths that do not exist). Files named explicitly are kept whatever their
    extension: the server decides whether they are images."""
    found: list[Path] = []
    missing: list[Path] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in sorted(files) if not f.startswith(".")
                             and Path(f).suffix.lower() in extensions)
        elif path.is_file():
            found.append(path)
        else:
            missing.append(path)
    return found, missing


def input_name(path: Path) -> str:
    """The raw input a file goes to: ``audio`` for sound files, else ``image``."""
    return AUDIO_INPUT if path.suffix.lower() in AUDIO_EXTENSIONS else IMAGE_INPUT


class _Backend(Protocol):
    def metadata(self) -> dict[str, Any]: ...

    def infer(self, request: InferRequest, binary: bool = False) -> InferResponse: ...

    def close(self) -> None: ...


class _HttpBackend:
    def __init__(self, url: str, model: str, version: int | None, timeout: float) -> None:
        self.model, self.version = model, version
        self.client = V2Client(url, timeout=timeout)

    def metadata(self) -> dict[str, Any]:
        return self.client.model_metadata(self.model, self.version)

    def infer(self, request: InferRequest, binary: bool = False) -> InferResponse:
        return self.client.infer(self.model, request, version=self.version, binary=binary)

    def close(self) -> None:
        self.client.close()


class _LocalBackend:
    def __init__(self, repo: Path, model: str, version: int | None) -> None:
        # Imported here: the HTTP path needs neither onnxruntime nor the model files.
        from ._serve.dataplane import DataPlane

        self.model, self.version = model, version
        self.dataplane = DataPlane(repo, models=())
        self.dataplane.load_model(model, version)

    def metadata(self) -> dict[str, Any]:
        return self.dataplane.model_metadata(self.model, self.version)

    def infer(self, request: InferRequest, binary: bool = False) -> InferResponse:
        return self.dataplane.infer_sync(self.model, self.version, request)

    def close(self) -> None:
        self.dataplane.close()


def _open(url: str | None, repo: Path | None, model: str, version: int | None,
          timeout: float) -> _Backend:
    if url is not None:
        return _HttpBackend(url, model, version, timeout)
    return _LocalBackend(Path(repo or "."), model, version)


def _classify(backend: _Backend, items: list[bytes], k: int, name: str) -> list[TopK]:
    response = backend.infer(bytes_request(name, items, classification=k))
    return [[(label, score) for score, _, label in row] for row in classifications(response)]


def predict(paths: list[Path], model: str, *, url: str | None = None, repo: Path | None = None,
            version: int | None = None, top_k: int = 3,
            timeout: float = 120.0) -> list[Prediction]:
    """Top-``top_k`` labels for every image or sound file under ``paths``, in discovery order.

    Exactly one of ``url`` (a running server) or ``repo`` (in-process) must be given. Errors
    that concern one file go into its Prediction; errors that concern every file (unknown
    model, unreachable server) raise.
    """
    _check_request(url, repo, top_k)
    backend = _open(url, repo, model, version, timeout)
    try:
        return _predict_files(paths, _classes(backend, top_k), Prediction)
    finally:
        backend.close()


def predict_files(paths: list[Path], model: str, *, url: str | None = None,
                  repo: Path | None = None, version: int | None = None, top_k: int = 3,
                  score_threshold: float | None = None, timeout: float = 120.0
                  ) -> list[Prediction] | list[TensorPrediction] | list[DetectionPrediction]:
    """``mint predict FILES``: the model's signature decides. A classifier (it has an encoded
    image, sound or text input) gives top-k labels per file, as :func:`predict`; a detector its
    labelled boxes per image (``score_threshold``: else the model's); a model that takes
    tensors only its outputs per ``.npy`` file (one item, or a batch, batch axis first)."""
    _check_request(url, repo, top_k)
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise InvalidInput(f"score_threshold must be from 0 to 1, got {score_threshold}")
    backend = _open(url, repo, model, version, timeout)
    try:
        meta = backend.metadata()
        if encoded_input(meta) is None:
            return _predict_tensors(backend, model, paths)
        if detection_outputs([str(t.get("name")) for t in meta.get("outputs", [])]):
            labels = [str(x) for x in (meta.get("parameters") or {}).get(LABELS_PARAMETER, [])]
            options = {} if score_threshold is None else {SCORE_THRESHOLD: score_threshold}
            return _predict_files(paths, _detections(backend, labels, options),
                                  DetectionPrediction)
        return _predict_files(paths, _classes(backend, top_k), Prediction)
    finally:
        backend.close()


def predict_texts(texts: list[str], model: str, *, url: str | None = None,
                  repo: Path | None = None, version: int | None = None, top_k: int = 3,
                  timeout: float = 120.0) -> list[Prediction]:
    """Top-``top_k`` labels for every text (a text-classification model's ``text`` input);
    ``Prediction.file`` holds the text."""
    _check_request(url, repo, top_k)
    backend = _open(url, repo, model, version, timeout)
    preds = []
    try:
        for start in range(0, len(texts), MAX_FILES_PER_REQUEST):
            chunk = texts[start:start + MAX_FILES_PER_REQUEST]
            rows = _classify(backend, [t.encode("utf-8") for t in chunk], top_k, TEXT_INPUT)
            preds += [Prediction(t, row[0][0], row[0][1], row) for t, row in
                      zip(chunk, rows, strict=True)]
    finally:
        backend.close()
    return preds


def _check_request(url: str | None, repo: Path | None, top_k: int) -> None:
    if (url is None) == (repo is None):
        raise InvalidInput("give exactly one of url (a running server) or repo (a model "
                           "repository to run in-process)")
    if top_k < 1:
        raise InvalidInput(f"top_k must be >= 1, got {top_k}")


P = TypeVar("P")
# One request's answers: (files, their bytes, the input name) -> one result per file.
Answer = Callable[[list[Path], list[bytes], str], list[P]]


def _classes(backend: _Backend, k: int) -> Answer[Prediction]:
    def answer(paths: list[Path], blobs: list[bytes], name: str) -> list[Prediction]:
        rows = _classify(backend, blobs, k, name)
        return [Prediction(str(p), row[0][0], row[0][1], row)
                for p, row in zip(paths, rows, strict=True)]
    return answer


def _detections(backend: _Backend, labels: list[str], options: dict[str, Any]) -> Answer[Any]:
    return lambda paths, blobs, _: [DetectionPrediction(str(p), row) for p, row in zip(
        paths, read_detections(backend.infer(detection_request(blobs, options), True), labels),
        strict=True)]


def _predict_files(paths: list[Path], answer: Answer[P], failed: Callable[..., P]) -> list[P]:
    files, missing = find_images([Path(p) for p in paths])
    results = {p: failed(str(p), error="no such file or directory") for p in missing}
    for batch in _batches(files):
        for path, pred in zip(batch, _predict_batch(batch, answer, failed), strict=True):
            results[path] = pred
    return [results[p] for p in [*missing, *files]]


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


def _predict_batch(batch: list[Path], answer: Answer[P], failed: Callable[..., P]) -> list[P]:
    preds: dict[Path, P] = {}
    readable: list[tuple[Path, bytes]] = []
    for path in batch:
        try:
            readable.append((path, path.read_bytes()))
        except OSError as exc:
            preds[path] = failed(str(path), error=f"cannot read: {exc.strerror or exc}")
    if readable:
        try:
            answers = answer([p for p, _ in readable], [blob for _, blob in readable],
                             input_name(readable[0][0]))
        except InvalidInput as exc:
            if len(readable) == 1:
                preds[readable[0][0]] = failed(str(readable[0][0]), error=str(exc))
            else:
                # One bad file fails its whole request; retry one by one so only it is reported.
                for path, _ in readable:
                    preds[path] = _predict_batch([path], answer, failed)[0]
        else:
            preds.update(zip([p for p, _ in readable], answers, strict=True))
    return [preds[p] for p in batch]


# --- models that take tensors --------------------------------------------------------------

def _predict_tensors(backend: _Backend, model: str, paths: list[Path]) -> list[TensorPrediction]:
    name, item_shape = _tensor_input(backend.metadata(), model)
    files, missing = find_images([Path(p) for p in paths], ARRAY_EXTENSIONS)
    preds = [TensorPrediction(str(p), error="no such file or directory") for p in missing]
    for path in files:
        try:
            batch, single = _load_array(path, name, item_shape)
            response = backend.infer(tensor_request(batch, name=name), binary=True)
        except InvalidInput as exc:
            preds.append(TensorPrediction(str(path), error=str(exc)))
            continue
        preds.append(TensorPrediction(str(path), {
            out.name: out.data[0] if single else out.data for out in response.outputs}))
    return preds


def _tensor_input(metadata: dict[str, Any], model: str) -> tuple[str, list[int]]:
    """The model's FP32 input (``input``, or its only input) and its shape without the batch
    axis (-1: any size)."""
    inputs = [t for t in metadata.get("inputs", []) if isinstance(t, dict)]
    named = [t for t in inputs if t.get("name") == TENSOR_INPUT] or inputs
    if len(named) != 1 or named[0].get("datatype") != "FP32":
        found = [(t.get("name"), t.get("datatype")) for t in inputs]
        raise InvalidInput(f"model {model!r} takes {found}; .npy files need one FP32 input")
    shape = named[0].get("shape") or [-1]
    return str(named[0]["name"]), [int(d) for d in shape[1:]]


def _load_array(path: Path, name: str, item_shape: list[int]) -> tuple[np.ndarray, bool]:
    """The file's batch, and whether the file held one item (its batch axis is added)."""
    try:
        array = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise InvalidInput(f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidInput(f"not a .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise InvalidInput("an .npz archive; expected one .npy array")
    dims = ", ".join("any" if d < 0 else str(d) for d in item_shape)
    single = array.ndim == len(item_shape)
    item = array.shape if single else array.shape[1:]
    if (not single and array.ndim != len(item_shape) + 1) or any(
            want >= 0 and want != got for want, got in zip(item_shape, item, strict=True)):
        raise InvalidInput(f"array of shape {list(array.shape)}: input {name!r} takes one item "
                           f"[{dims}] or a batch [N, {dims}]")
    if not single and array.shape[0] == 0:
        raise InvalidInput(f"array of shape {list(array.shape)}: the batch is empty")
    return (array[np.newaxis] if single else array), single


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return [_jsonable(a) for a in array] if array.ndim > 1 else [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array]
    return array.tolist()


# --- printing --------------------------------------------------------------------------------

def print_predictions(preds: Sequence[Prediction] | Sequence[TensorPrediction],
                      console: Console | None = None) -> None:
    """A table: file, top label and score, the other top-k (or each output tensor's shape and
    values), or the error in red."""
    console = console or Console()
    table = Table(show_header=True, header_style="bold")
    table.add_column("File", overflow="fold")
    tensors = [p for p in preds if isinstance(p, TensorPrediction)]
    if tensors:
        for column in ("Output", "Shape", "Values"):
            table.add_column(column)
        for t in tensors:
            if t.error is not None:
                table.add_row(escape(t.file), "[red]error[/red]", "",
                              f"[red]{escape(t.error)}[/red]")
            for name, array in t.outputs.items():
                values = np.array2string(array, precision=4, threshold=8, separator=", ")
                table.add_row(escape(t.file), escape(name), str(list(array.shape)),
                              escape(values))
        console.print(table)
        return
    table.add_column("Label")
    table.add_column("Score", justify="right")
    table.add_column("Top-k")
    for p in preds:
        assert isinstance(p, Prediction)
        if p.error is not None:
            table.add_row(escape(p.file), "[red]error[/red]", "", f"[red]{escape(p.error)}[/red]")
        else:
            others = ", ".join(f"{escape(lb)} {s:.3f}" for lb, s in p.top_k)
            table.add_row(escape(p.file), escape(p.label or ""), f"{p.score or 0.0:.3f}", others)
    console.print(table)
