"""The one data plane behind every transport (HTTP V2 and TF Serving REST, gRPC; the in-process
client too).

It owns the loaded models and all request semantics: which inputs are accepted, validation,
classification post-processing and every error message. Transports only translate wire formats
(see :mod:`.codec`, :mod:`.tfserving`, :mod:`.grpc`) and map :class:`~modelmint.errors.MintError`
to a status.

This module must not import torch: a serving process needs only onnxruntime, Pillow and NumPy.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import re
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..data.preprocess import preprocess_batch
from ..errors import InvalidInput, MintError, ModelNotReady, NotFound, RepositoryError
from ..repository import (
    ONNX_FILE,
    WARMUP_DIR,
    ModelMetadata,
    ModelRepository,
    VersionRef,
    require_repo_dir,
)
from .codec import decode_request
from .types import BYTES, InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput

log = logging.getLogger("modelmint.serve")

SERVER_NAME = "modelmint"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["classification", "binary_tensor_data"]
TENSOR_INPUT = "input"
IMAGE_INPUT = "image"
OUTPUT = "probabilities"
# Bounds memory per request: a 16 MiB body of tiny PNGs would otherwise expand to tens of
# GiB of FP32 tensors. Clients split larger jobs (the SDK sends 16 per request).
DEFAULT_MAX_BATCH_SIZE = 64
_VERSION = re.compile(r"[0-9]{1,18}")  # int() alone would also accept " 1", "1_0", "+1"


def server_version() -> str:
    try:
        return importlib.metadata.version("modelmint")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def parse_version(text: str | None, where: str) -> int | None:
    """A model version as it arrives on the wire (URL segment, gRPC field); None or "" means
    the served version. ``where`` names the field for the error message."""
    if not text:
        return None
    if not _VERSION.fullmatch(text):
        raise InvalidInput(f"model version {text!r} {where} is not a non-negative integer")
    return int(text)


def _open_session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    # Spinning intra-op threads burn every core between requests and starve the event loop and
    # the decode/preprocess threads; blocking costs microseconds per request.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise RepositoryError(f"{path}: onnxruntime cannot load it ({exc})") from exc


class LoadedModel:
    """One servable version: its ONNX session, metadata and request semantics."""

    def __init__(self, ref: VersionRef, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        self.ref = ref
        self.name = ref.model
        self.version = ref.version
        self.metadata: ModelMetadata = ref.metadata()
        self.labels = list(self.metadata.labels)
        self.spec = self.metadata.preprocessing
        self.max_batch_size = max_batch_size
        self.session = _open_session(ref.path / ONNX_FILE)
        self._check_graph()

    def _check_graph(self) -> None:
        """Refuse at load time a graph that would fail (with a 500) on every request."""
        where = self.ref.path / ONNX_FILE
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        crop = self.spec.crop
        graph_input = inputs.get(TENSOR_INPUT)
        if graph_input is None or OUTPUT not in outputs:
            raise RepositoryError(f"{where}: expected input {TENSOR_INPUT!r} and output "
                                  f"{OUTPUT!r}, found {sorted(inputs)} -> {sorted(outputs)}")
        shape = list(graph_input.shape)
        if len(shape) != 4 or isinstance(shape[0], int) or shape[1:] != [3, crop, crop]:
            raise RepositoryError(f"{where}: input {TENSOR_INPUT!r} has shape {shape}, expected "
                                  f"[batch, 3, {crop}, {crop}] with a dynamic batch axis")
        classes = list(outputs[OUTPUT].shape)[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise RepositoryError(f"{where}: output {OUTPUT!r} has {classes} classes but "
                                  f"modelmint.json lists {len(self.labels)} labels")

    def warmup(self) -> int:
        """Replay the recorded requests: the first real request is then not the slow one, and a
        version that cannot answer its own recorded request is never served."""
        files = sorted((self.ref.path / WARMUP_DIR).glob("*.json"))
        for path in files:
            try:
                self.infer(decode_request(path.read_bytes()))
            except MintError as exc:
                raise RepositoryError(f"{path}: warmup request failed: {exc}") from exc
        return len(files)

    def v2_metadata(self) -> dict[str, Any]:
        inputs, outputs = self.metadata.signature
        return {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": PLATFORM,
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
        }

    # --- inference (runs on a worker thread) -----------------------------------------------

    def infer(self, request: InferRequest) -> InferResponse:
        batch = self._batch(request.inputs)
        probabilities = np.asarray(self.session.run([OUTPUT], {TENSOR_INPUT: batch})[0])
        if probabilities.shape != (batch.shape[0], len(self.labels)):
            raise RepositoryError(f"model {self.name!r} version {self.version}: output "
                                  f"{OUTPUT!r} has shape {list(probabilities.shape)}, expected "
                                  f"[{batch.shape[0]}, {len(self.labels)}]")
        outputs = [self._output(r, probabilities) for r in self._requested(request.outputs)]
        return InferResponse(self.name, str(self.version), request.id, outputs)

    def _expects(self) -> str:
        crop = self.spec.crop
        return (f"model {self.name!r} takes exactly one of {TENSOR_INPUT!r} (FP32 [N, 3, {crop}, "
                f"{crop}]) or {IMAGE_INPUT!r} (BYTES [N], encoded image files)")

    def _batch(self, inputs: list[InferInput]) -> np.ndarray:
        names = [t.name for t in inputs]
        for name in names:
            if name not in (TENSOR_INPUT, IMAGE_INPUT):
                raise InvalidInput(f"unknown input {name!r}; {self._expects()}")
            if names.count(name) > 1:
                raise InvalidInput(f"input {name!r} is given more than once")
        if len(names) != 1:
            given = "both inputs were given" if names else "no input was given"
            raise InvalidInput(f"{given}; {self._expects()}")
        tensor = inputs[0]
        return self._tensor_batch(tensor) if tensor.name == TENSOR_INPUT else self._image_batch(
            tensor)

    def _check_batch(self, name: str, n: int) -> None:
        if n > self.max_batch_size:
            raise InvalidInput(f"input {name!r}: batch of {n} exceeds this server's "
                               f"max_batch_size of {self.max_batch_size}; split the request")

    def _tensor_batch(self, tensor: InferInput) -> np.ndarray:
        crop = self.spec.crop
        expected = f"expected FP32 [N, 3, {crop}, {crop}] with N >= 1"
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input {TENSOR_INPUT!r}: datatype is {tensor.datatype}, "
                               f"{expected}")
        shape = list(tensor.shape)
        if len(shape) != 4 or shape[0] < 1 or shape[1:] != [3, crop, crop]:
            raise InvalidInput(f"input {TENSOR_INPUT!r}: shape is {shape}, {expected}")
        data = tensor.data
        if data.dtype != np.float32 or list(data.shape) != shape:
            raise InvalidInput(f"input {TENSOR_INPUT!r}: data is {data.dtype} "
                               f"{list(data.shape)}, {expected}")
        self._check_batch(TENSOR_INPUT, shape[0])
        # NaN/inf would propagate to NaN probabilities, which JSON cannot even carry.
        if not np.isfinite(data).all():
            raise InvalidInput(f"input {TENSOR_INPUT!r}: contains NaN or infinite values")
        return np.ascontiguousarray(data)

    def _image_batch(self, tensor: InferInput) -> np.ndarray:
        expected = "expected BYTES [N] (one encoded image file per element) with N >= 1"
        if tensor.datatype != BYTES:
            raise InvalidInput(f"input {IMAGE_INPUT!r}: datatype is {tensor.datatype}, "
                               f"{expected}")
        if len(tensor.shape) != 1 or tensor.shape[0] < 1:
            raise InvalidInput(f"input {IMAGE_INPUT!r}: shape is {list(tensor.shape)}, "
                               f"{expected}")
        self._check_batch(IMAGE_INPUT, tensor.shape[0])
        blobs: list[bytes] = []
        for i, item in enumerate(tensor.data.ravel()):
            if not isinstance(item, bytes):
                raise InvalidInput(f"{IMAGE_INPUT}[{i}]: expected bytes of an encoded image, "
                                   f"got {type(item).__name__}")
            blobs.append(item)
        if len(blobs) != tensor.shape[0]:
            raise InvalidInput(f"input {IMAGE_INPUT!r}: has {len(blobs)} elements, shape says "
                               f"{tensor.shape[0]}")
        return preprocess_batch(blobs, self.spec, name=IMAGE_INPUT)

    def _requested(self, requested: list[RequestedOutput]) -> list[RequestedOutput]:
        if not requested:
            return [RequestedOutput(OUTPUT)]
        seen: set[str] = set()
        for out in requested:
            if out.name != OUTPUT:
                raise InvalidInput(f"unknown output {out.name!r}; model {self.name!r} has "
                                   f"outputs [{OUTPUT!r}]")
            if out.name in seen:
                raise InvalidInput(f"output {out.name!r} is requested more than once")
            seen.add(out.name)
        return requested

    def _output(self, requested: RequestedOutput, probabilities: np.ndarray) -> InferOutput:
        k = requested.parameters.get("classification")
        n, classes = probabilities.shape
        if k is None:
            return InferOutput(OUTPUT, "FP32", [n, classes], probabilities)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidInput(f"output {OUTPUT!r}: parameter 'classification' must be an "
                               f"integer >= 1, got {k!r}")
        k = min(k, classes)
        # Stable sort on the negated scores: ties keep the lower class index first.
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        out = np.empty((n, k), dtype=np.object_)
        for row in range(n):
            for col, index in enumerate(order[row]):
                # Triton's format: std::to_string(float) is printf("%f"), then index and label.
                score = float(probabilities[row, index])
                out[row, col] = f"{score:f}:{int(index)}:{self.labels[index]}".encode()
        return InferOutput(OUTPUT, BYTES, [n, k], out)


class DataPlane:
    """Loads the latest version of each model in a repository and answers V2 requests."""

    def __init__(self, repo: str | Path | ModelRepository, *,
                 models: Collection[str] | None = None,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 workers: int | None = None) -> None:
        self.repo = repo if isinstance(repo, ModelRepository) else require_repo_dir(repo)
        self.only = None if models is None else set(models)
        self.max_batch_size = max_batch_size
        self._models: dict[str, LoadedModel] = {}
        self._failed: dict[str, tuple[int, str]] = {}  # model -> (version, reason)
        self._ready = False
        self._load_lock = threading.Lock()
        # Bounded and owned by us (not the event loop's default): caps memory and CPU
        # oversubscription, since every session already uses all cores for one request.
        self._executor = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 1),
                                            thread_name_prefix="modelmint-infer")

    # --- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Load the latest version of every model; a model that fails is logged and skipped."""
        with self._load_lock:
            if self._ready:
                return
            for name in self.repo.models():
                if self.only is not None and name not in self.only:
                    continue
                try:
                    self.load_model(name)
                except Exception as exc:  # one broken model must not take the server down
                    version = self._failed.get(name, (0, ""))[0]
                    log.error("model %r version %s failed to load, skipping it: %s", name,
                              version or "?", exc)
                    self._failed.setdefault(name, (version, str(exc)))
            self._ready = True

    def load_model(self, model: str, version: int | None = None) -> LoadedModel:
        """Load (or replace with) one version, latest if ``version`` is None; raises on failure."""
        ref = self.repo.version(model, version)
        self._failed[model] = (ref.version, "loading")
        loaded = LoadedModel(ref, self.max_batch_size)
        count = loaded.warmup()
        self._models[model] = loaded
        del self._failed[model]
        log.info("loaded model %r version %d (%d warmup request(s))", model, ref.version, count)
        return loaded

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._models.clear()

    @property
    def models(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    # --- V2 endpoints ----------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once startup loading has finished (broken models are skipped, not waited on)."""
        return self._ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        return self.model(model, version).v2_metadata()

    def model_ready(self, model: str, version: int | None = None) -> bool:
        """True when served; False when known but not servable; NotFound when unknown."""
        try:
            self.model(model, version)
        except ModelNotReady:
            return False
        return True

    def model(self, model: str, version: int | None = None) -> LoadedModel:
        loaded = self._models.get(model)
        if loaded is not None:
            if version is not None and version != loaded.version:
                raise NotFound(f"model {model!r} version {version} is not loaded "
                               f"(this server serves version {loaded.version})")
            return loaded
        if model in self._failed:
            failed = self._failed[model][0]
            if version is not None and version != failed:
                raise NotFound(f"model {model!r} version {version} is not loaded")
            raise ModelNotReady(f"model {model!r} version {failed} is not ready: it failed "
                                "to load (see the server log)")
        if not self._ready:
            raise ModelNotReady("the server is still loading models")
        version_text = "" if version is None else f" version {version}"
        raise NotFound(f"unknown model {model!r}{version_text}; serving "
                       f"{sorted(self._models) or 'no models'}")

    async def infer(self, model: str, version: int | None,
                    request: InferRequest) -> InferResponse:
        loaded = self.model(model, version)  # cheap: unknown models fail without a thread hop
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, loaded.infer, request)

    def infer_sync(self, model: str, version: int | None,
                   request: InferRequest) -> InferResponse:
        """Same semantics as :meth:`infer`, on the calling thread (in-process SDK use)."""
        return self.model(model, version).infer(request)
