"""One model version's request semantics: which inputs are accepted, validation,
preprocessing of ``image`` inputs, classification post-processing and their error messages.

Where the ONNX session runs is not its concern (see :mod:`.executors`): :meth:`LoadedModel.prepare`
turns a request into the FP32 batch an executor runs, :meth:`LoadedModel.respond` turns the
probabilities into the response. Must not import torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.preprocess import preprocess_batch
from ..errors import InvalidInput, MintError, RepositoryError
from ..repository import ONNX_FILE, WARMUP_DIR, ModelMetadata, VersionRef
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

    def check_io(self, inputs: dict[str, list[Any]], outputs: dict[str, list[Any]]) -> None:
        """Refuse at load time a graph that would fail (with a 500) on every request."""
        where = self.ref.path / ONNX_FILE
        crop = self.spec.crop
        if TENSOR_INPUT not in inputs or OUTPUT not in outputs:
            raise RepositoryError(f"{where}: expected input {TENSOR_INPUT!r} and output "
                                  f"{OUTPUT!r}, found {sorted(inputs)} -> {sorted(outputs)}")
        shape = list(inputs[TENSOR_INPUT])
        if len(shape) != 4 or isinstance(shape[0], int) or shape[1:] != [3, crop, crop]:
            raise RepositoryError(f"{where}: input {TENSOR_INPUT!r} has shape {shape}, expected "
                                  f"[batch, 3, {crop}, {crop}] with a dynamic batch axis")
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
