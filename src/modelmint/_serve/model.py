"""One model version's request semantics: which inputs are accepted, validation,
preprocessing of the raw inputs (``image``, ``audio`` WAV files or ``text`` UTF-8 strings, by
the version's preprocessing kind), classification post-processing and their error messages.

Where the ONNX session runs is not its concern (see :mod:`.executors`): :meth:`LoadedModel.prepare`
turns a request into the FP32 batch an executor runs, :meth:`LoadedModel.respond` turns the
probabilities into the response. Must not import torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._data.audio import AudioSpec, preprocess_audio_batch
from .._data.preprocess import ImageSpec, preprocess_batch
from .._data.text import TextEncoder, TextSpec, decode_texts
from .._repository import ONNX_FILE, WARMUP_DIR, ModelMetadata, VersionRef
from .._repository.metadata import RAW_INPUTS, input_shape
from ..errors import InvalidInput, MintError, RepositoryError
from .codec import decode_request
from .types import BYTES, InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput

PLATFORM = "onnxruntime_onnx"
TENSOR_INPUT = "input"
IMAGE_INPUT = "image"
OUTPUT = "probabilities"
# Bounds memory per request: a 16 MiB body of tiny PNGs would otherwise expand to tens of
# GiB of FP32 tensors. Clients split larger jobs (the SDK sends 16 per request).
DEFAULT_MAX_BATCH_SIZE = 64


class LoadedModel:
    """One version's metadata and request semantics (validation, preprocessing, outputs);
    the ONNX session itself runs in an executor (see :mod:`.executors`)."""

    def __init__(self, ref: VersionRef, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        self.ref = ref
        self.name = ref.model
        self.version = ref.version
        self.metadata: ModelMetadata = ref.metadata()
        self.labels = list(self.metadata.labels)
        self.spec = self.metadata.preprocessing
        self.max_batch_size = max_batch_size
        self.raw_input = RAW_INPUTS[self.spec.kind]  # "image", "audio" or "text"
        self.item_shape = input_shape(self.spec)  # of ``input``, without the batch axis
        # Vocabulary lookups are built once per version, not per request.
        self._text = TextEncoder(self.spec) if isinstance(self.spec, TextSpec) else None

    @property
    def slot_crop(self) -> int:
        """Sizes the worker's shared-memory slots (8 images of this crop): image crop, or 224,
        whose 4.8 MB slots hold 8 log-mels or TF-IDF rows of up to 150k terms."""
        return self.spec.crop if isinstance(self.spec, ImageSpec) else 224

    def check_io(self, inputs: dict[str, list[Any]], outputs: dict[str, list[Any]]) -> None:
        """Refuse at load time a graph that would fail (with a 500) on every request."""
        where = self.ref.path / ONNX_FILE
        if TENSOR_INPUT not in inputs or OUTPUT not in outputs:
            raise RepositoryError(f"{where}: expected input {TENSOR_INPUT!r} and output "
                                  f"{OUTPUT!r}, found {sorted(inputs)} -> {sorted(outputs)}")
        shape = list(inputs[TENSOR_INPUT])
        if (len(shape) != 1 + len(self.item_shape) or isinstance(shape[0], int)
                or shape[1:] != self.item_shape):
            raise RepositoryError(f"{where}: input {TENSOR_INPUT!r} has shape {shape}, expected "
                                  f"[batch, {', '.join(map(str, self.item_shape))}] with a "
                                  "dynamic batch axis")
        classes = list(outputs[OUTPUT])[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise RepositoryError(f"{where}: output {OUTPUT!r} has {classes} classes but "
                                  f"modelmint.json lists {len(self.labels)} labels")

    def warmup_requests(self) -> list[InferRequest]:
        """The recorded requests replayed before this version takes traffic."""
        requests = []
        for path in sorted((self.ref.path / WARMUP_DIR).glob("*.json")):
            try:
                requests.append(decode_request(path.read_bytes()))
            except MintError as exc:
                raise RepositoryError(f"{path}: warmup request failed: {exc}") from exc
        return requests

    def v2_metadata(self) -> dict[str, Any]:
        inputs, outputs = self.metadata.signature
        return {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": PLATFORM,
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
        }

    # --- request semantics: prepare (on a thread), then respond -----------------------------

    def prepare(self, request: InferRequest) -> np.ndarray:
        """Validate and preprocess: the FP32 batch the executor runs."""
        return self._batch(request.inputs)

    def respond(self, request: InferRequest, probabilities: np.ndarray) -> InferResponse:
        rows = request.inputs[0].shape[0]  # prepare() has validated the request
        if probabilities.shape != (rows, len(self.labels)):
            raise RepositoryError(f"model {self.name!r} version {self.version}: output "
                                  f"{OUTPUT!r} has shape {list(probabilities.shape)}, expected "
                                  f"[{rows}, {len(self.labels)}]")
        outputs = [self._output(r, probabilities) for r in self._requested(request.outputs)]
        return InferResponse(self.name, str(self.version), request.id, outputs)

    def _expects(self) -> str:
        dims = ", ".join(map(str, self.item_shape))
        what = {"image": "encoded image files", "audio": "sound files such as WAV",
                "text": "UTF-8 strings"}[self.spec.kind]
        return (f"model {self.name!r} takes exactly one of {TENSOR_INPUT!r} (FP32 [N, {dims}]) "
                f"or {self.raw_input!r} (BYTES [N], {what})")

    def _batch(self, inputs: list[InferInput]) -> np.ndarray:
        names = [t.name for t in inputs]
        for name in names:
            if name not in (TENSOR_INPUT, self.raw_input):
                raise InvalidInput(f"unknown input {name!r}; {self._expects()}")
            if names.count(name) > 1:
                raise InvalidInput(f"input {name!r} is given more than once")
        if len(names) != 1:
            given = "both inputs were given" if names else "no input was given"
            raise InvalidInput(f"{given}; {self._expects()}")
        tensor = inputs[0]
        return self._tensor_batch(tensor) if tensor.name == TENSOR_INPUT else self._raw_batch(
            tensor)

    def _check_batch(self, name: str, n: int) -> None:
        if n > self.max_batch_size:
            raise InvalidInput(f"input {name!r}: batch of {n} exceeds this server's "
                               f"max_batch_size of {self.max_batch_size}; split the request")

    def _tensor_batch(self, tensor: InferInput) -> np.ndarray:
        expected = f"expected FP32 [N, {', '.join(map(str, self.item_shape))}] with N >= 1"
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input {TENSOR_INPUT!r}: datatype is {tensor.datatype}, "
                               f"{expected}")
        shape = list(tensor.shape)
        if len(shape) != 1 + len(self.item_shape) or shape[0] < 1 or shape[1:] != self.item_shape:
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

    def _raw_batch(self, tensor: InferInput) -> np.ndarray:
        name, kind = self.raw_input, self.spec.kind
        element = {"image": "one encoded image file", "audio": "one sound file",
                   "text": "one UTF-8 string"}[kind]
        expected = f"expected BYTES [N] ({element} per element) with N >= 1"
        if tensor.datatype != BYTES:
            raise InvalidInput(f"input {name!r}: datatype is {tensor.datatype}, {expected}")
        if len(tensor.shape) != 1 or tensor.shape[0] < 1:
            raise InvalidInput(f"input {name!r}: shape is {list(tensor.shape)}, {expected}")
        self._check_batch(name, tensor.shape[0])
        items = list(tensor.data.ravel())
        if len(items) != tensor.shape[0]:
            raise InvalidInput(f"input {name!r}: has {len(items)} elements, shape says "
                               f"{tensor.shape[0]}")
        if self._text is not None:
            return self._text.encode_batch(decode_texts(items, name), name)
        blobs: list[bytes] = []
        for i, item in enumerate(items):
            if not isinstance(item, bytes):
                what = "an encoded image" if kind == "image" else "a sound file"
                raise InvalidInput(f"{name}[{i}]: expected bytes of {what}, got "
                                   f"{type(item).__name__}")
            blobs.append(item)
        if isinstance(self.spec, AudioSpec):
            return preprocess_audio_batch(blobs, self.spec, name=name)
        assert isinstance(self.spec, ImageSpec)
        return preprocess_batch(blobs, self.spec, name=name)

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
