"""One model version's request semantics: which inputs are accepted, validation,
preprocessing of the raw inputs (``image``, ``audio`` WAV files or ``text`` UTF-8 strings, by
the version's preprocessing kind; a ``tensor`` model takes only its FP32 ``input``), the
declared outputs, classification post-processing and their error messages. A detector
(preprocessing kind ``letterbox``) letterboxes its images and selects its boxes after the graph
(see :mod:`.detection`).

Where the ONNX session runs is not its concern (see :mod:`.executors`): :meth:`LoadedModel.prepare`
turns a request into the FP32 batch an executor runs, :meth:`LoadedModel.respond` turns the
executor's outputs into the response. Must not import torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._data.audio import AudioSpec, preprocess_audio_batch
from .._data.detection import LetterboxSpec
from .._data.preprocess import ImageSpec, MemoryBudget, preprocess_batch
from .._data.text import TextEncoder, TextSpec, decode_texts
from .._repository import (
    ONNX_FILE,
    WARMUP_DIR,
    ModelMetadata,
    TensorSpec,
    VersionRef,
)
from .._repository.metadata import input_shape
from .._tensor_names import PROBABILITIES, TENSOR_INPUT
from ..errors import InvalidInput, MintError, RepositoryError
from .codec import decode_request
from .detection import LABELS_PARAMETER, Detector
from .types import (
    BYTES,
    GraphTensors,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    Outputs,
    RequestedOutput,
    v2_datatype,
)

PLATFORM = "onnxruntime_onnx"
CLASSIFICATION = "classification"  # the output parameter of the classification extension
# Bounds memory per request: a 16 MiB body of tiny PNGs would otherwise expand to tens of
# GiB of FP32 tensors. Clients split larger jobs (the SDK sends 16 per request).
DEFAULT_MAX_BATCH_SIZE = 64
_RAW_ELEMENTS = {"image": "one encoded image file", "audio": "one sound file",
                 "text": "one UTF-8 string", "letterbox": "one encoded image file"}


def _dims(shape: list[Any]) -> str:
    return "[" + ", ".join("N" if i == 0 else str(d) for i, d in enumerate(shape)) + "]"


class LoadedModel:
    """One version's metadata and request semantics (validation, preprocessing, outputs);
    the ONNX session itself runs in an executor (see :mod:`.executors`)."""

    def __init__(self, ref: VersionRef, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 decode_budget: MemoryBudget | None = None) -> None:
        self.ref = ref
        self.name = ref.model
        self.version = ref.version
        self.metadata: ModelMetadata = ref.metadata()
        self.labels = list(self.metadata.labels)
        self.spec = self.metadata.preprocessing
        self.max_batch_size = max_batch_size
        self.decode_budget = decode_budget  # shared by the server's decodes; None: no limit
        inputs, outputs = self.metadata.signature
        # The BYTES input beside ``input`` ("image", "audio", "text"), if the version has one.
        self.raw_input = next((t.name for t in inputs if t.datatype == BYTES), None)
        self.item_shape = input_shape(self.spec)  # of ``input``, without the batch axis
        self.outputs: dict[str, TensorSpec] = {t.name: t for t in outputs}
        # The classification extension needs class scores and the labels that name them.
        self.classifier = PROBABILITIES if self.labels and PROBABILITIES in self.outputs else None
        # Vocabulary lookups are built once per version, not per request.
        self._text = TextEncoder(self.spec) if isinstance(self.spec, TextSpec) else None
        # A detector's graph returns dense candidates; the served outputs are selected after it.
        self.detector = (Detector(self.spec, self.labels, f"model {self.name!r} version "
                                  f"{self.version}")
                         if isinstance(self.spec, LetterboxSpec) else None)

    @property
    def graph_outputs(self) -> list[TensorSpec]:
        """What the graph must return: the declared outputs, or a detector's dense ones."""
        if self.detector is not None:
            return self.detector.graph_outputs
        return list(self.outputs.values())

    @property
    def output_names(self) -> list[str]:
        """The graph outputs, in order: what every execution computes."""
        return [t.name for t in self.graph_outputs]

    @property
    def slot_crop(self) -> int:
        """Sizes the worker's shared-memory slots (8 images of this crop): image crop, or 224,
        whose 4.8 MB slots hold 8 log-mels or TF-IDF rows of up to 150k terms."""
        return self.spec.crop if isinstance(self.spec, ImageSpec) else 224

    def check_io(self, inputs: GraphTensors, outputs: GraphTensors) -> None:
        """Refuse at load time a graph that would fail (with a 500) on every request: the
        declared signature (modelmint.json) must match the graph."""
        where = self.ref.path / ONNX_FILE
        if TENSOR_INPUT not in inputs:
            raise RepositoryError(f"{where}: expected input {TENSOR_INPUT!r}, found "
                                  f"{sorted(inputs)}")
        datatype, shape = inputs[TENSOR_INPUT]
        if (datatype not in (None, "FP32") or len(shape) != 1 + len(self.item_shape)
                or isinstance(shape[0], int) or list(shape[1:]) != self.item_shape):
            raise RepositoryError(f"{where}: input {TENSOR_INPUT!r} is {datatype or 'FP32'} "
                                  f"{list(shape)}, expected FP32 [batch, "
                                  f"{', '.join(map(str, self.item_shape))}] with a dynamic "
                                  "batch axis")
        source = ("a detector of its labels returns" if self.detector is not None
                  else "modelmint.json declares")
        expected = self.graph_outputs
        missing = [t.name for t in expected if t.name not in outputs]
        if missing:
            raise RepositoryError(f"{where}: has no output {missing[0]!r}, which {source}; "
                                  f"the graph's outputs are {sorted(outputs)}")
        for spec in expected:
            name = spec.name
            datatype, shape = outputs[name]
            fixed = [(d, g) for d, g in zip(spec.shape[1:], shape[1:], strict=False)
                     if d != -1 and isinstance(g, int)]
            if ((datatype is not None and datatype != spec.datatype)
                    or (shape and (len(shape) != len(spec.shape) or isinstance(shape[0], int)))
                    or any(d != g for d, g in fixed)):
                raise RepositoryError(f"{where}: output {name!r} is {datatype or '?'} "
                                      f"{list(shape)}, but {source} "
                                      f"{spec.datatype} {spec.shape} (the batch axis first, "
                                      "dynamic)")

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
        meta: dict[str, Any] = {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": PLATFORM,
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
        }
        if self.detector is not None:  # ``classes`` are indices: clients need their names
            meta["parameters"] = {LABELS_PARAMETER: list(self.labels)}
        return meta

    # --- request semantics: prepare (on a thread), then respond -----------------------------

    def prepare(self, request: InferRequest) -> np.ndarray:
        """Validate (inputs and requested outputs) and preprocess: the FP32 batch to run."""
        self._requested(request.outputs)  # a bad output request fails before running
        if self.detector is not None:
            self.detector.selection(request.parameters)  # bad parameters fail before running
            request.letterboxes = None
        return self._batch(request)

    def respond(self, request: InferRequest, outputs: Outputs) -> InferResponse:
        rows = request.inputs[0].shape[0]  # prepare() has validated the request
        if self.detector is not None:
            outputs = self.detector.select(request, outputs, rows)
        result = []
        for requested in self._requested(request.outputs):
            spec = self.outputs[requested.name]
            data = outputs.get(requested.name)
            self._check_output(spec, data, rows)
            assert data is not None
            result.append(self._output(requested, spec, data))
        return InferResponse(self.name, str(self.version), request.id, result)

    def _check_output(self, spec: TensorSpec, data: np.ndarray | None, rows: int) -> None:
        """What the graph returned must be what modelmint.json declares (else a 500)."""
        expected = [rows, *spec.shape[1:]]
        if data is not None and data.ndim == len(expected) and all(
                d in (-1, g) for d, g in zip(expected, data.shape, strict=True)):
            try:
                if v2_datatype(data.dtype) == spec.datatype:
                    return
            except InvalidInput:
                pass
        got = "nothing" if data is None else f"{data.dtype} {list(data.shape)}"
        raise RepositoryError(f"model {self.name!r} version {self.version}: output "
                              f"{spec.name!r} is {got}, expected {spec.datatype} {expected}")

    def _expects(self) -> str:
        tensor = f"{TENSOR_INPUT!r} (FP32 {_dims([-1, *self.item_shape])})"
        if self.raw_input is None:
            return f"model {self.name!r} takes exactly one input: {tensor}"
        what = {"image": "encoded image files", "audio": "sound files such as WAV",
                "text": "UTF-8 strings", "letterbox": "encoded image files"}[self.spec.kind]
        return (f"model {self.name!r} takes exactly one of {tensor} or {self.raw_input!r} "
                f"(BYTES [N], {what})")

    def _batch(self, request: InferRequest) -> np.ndarray:
        inputs = request.inputs
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
            request, tensor)

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
        # NaN/inf would propagate to NaN outputs, which JSON cannot even carry.
        if not np.isfinite(data).all():
            raise InvalidInput(f"input {TENSOR_INPUT!r}: contains NaN or infinite values")
        return np.ascontiguousarray(data)

    def _raw_batch(self, request: InferRequest, tensor: InferInput) -> np.ndarray:
        name, kind = tensor.name, self.spec.kind
        expected = f"expected BYTES [N] ({_RAW_ELEMENTS[kind]} per element) with N >= 1"
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
                what = "a sound file" if kind == "audio" else "an encoded image"
                raise InvalidInput(f"{name}[{i}]: expected bytes of {what}, got "
                                   f"{type(item).__name__}")
            blobs.append(item)
        if isinstance(self.spec, AudioSpec):
            return preprocess_audio_batch(blobs, self.spec, name=name, budget=self.decode_budget)
        if self.detector is not None:
            batch, request.letterboxes = self.detector.letterbox(blobs, name, self.decode_budget)
            return batch
        assert isinstance(self.spec, ImageSpec)
        return preprocess_batch(blobs, self.spec, name=name, budget=self.decode_budget)

    def _requested(self, requested: list[RequestedOutput]) -> list[RequestedOutput]:
        """The outputs to return (none asked: every declared one), validated."""
        if not requested:
            return [RequestedOutput(name) for name in self.outputs]
        seen: set[str] = set()
        for out in requested:
            if out.name not in self.outputs:
                raise InvalidInput(f"unknown output {out.name!r}; model {self.name!r} has "
                                   f"outputs {list(self.outputs)}")
            if out.name in seen:
                raise InvalidInput(f"output {out.name!r} is requested more than once")
            seen.add(out.name)
            k = out.parameters.get(CLASSIFICATION)
            if k is None:
                continue
            if out.name != self.classifier:
                which = (f"this model's is {self.classifier!r}" if self.classifier
                         else "this model has none")
                raise InvalidInput(f"output {out.name!r}: parameter {CLASSIFICATION!r} applies "
                                   f"only to a classifier's class scores; {which}")
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise InvalidInput(f"output {out.name!r}: parameter {CLASSIFICATION!r} must be "
                                   f"an integer >= 1, got {k!r}")
        return requested

    def _output(self, requested: RequestedOutput, spec: TensorSpec,
                data: np.ndarray) -> InferOutput:
        k = requested.parameters.get(CLASSIFICATION)
        if k is None:
            return InferOutput(spec.name, spec.datatype, list(data.shape), data)
        n, classes = data.shape  # _requested() allowed it: the classifier's [N, classes]
        k = min(k, classes)
        # Stable sort on the negated scores: ties keep the lower class index first.
        order = np.argsort(-data, axis=1, kind="stable")[:, :k]
        out = np.empty((n, k), dtype=np.object_)
        for row in range(n):
            for col, index in enumerate(order[row]):
                # Triton's format: std::to_string(float) is printf("%f"), then index and label.
                score = float(data[row, index])
                out[row, col] = f"{score:f}:{int(index)}:{self.labels[index]}".encode()
        return InferOutput(spec.name, BYTES, [n, k], out)
