"""``modelmint.json``: everything a server or SDK needs to use a version without the trainer.

Schema (``format: modelmint/1``)::

    name, version, task ("image-/audio-/text-classification", or another task's name),
    architecture, created
    inputs / outputs: [{name, datatype, shape}]   (V2 datatypes; -1 = dynamic)
    labels: [str]                                 (index = class id; empty: not a classifier)
    preprocessing: ImageSpec | AudioSpec | TextSpec | TensorInputSpec .to_json(), chosen by its
                   "kind" (absent kind: image, as the first versions wrote it)
    metrics: {val_accuracy, ...}
    provenance: {data_root, data_fingerprint, split: {train, val}, backbone, hyperparameters, ...}
    files: {onnx: "model.onnx", weights: "model.safetensors", report: "report.json"}

The signature (``inputs``/``outputs``) is what the server serves. A task may declare it; left
undeclared (and in versions that stored none) it is a classifier's: the FP32 ``input`` (plus
the kind's raw BYTES input) and ``probabilities`` FP32 [-1, len(labels)]. Inputs are always
the FP32 ``input`` and, for image/audio/text, that kind's raw input: nothing else can be fed.
Every output has the batch axis first (-1), so dynamic batching can split it per request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._data.audio import AudioSpec
from .._data.detection import LetterboxSpec
from .._data.preprocess import ImageSpec
from .._data.text import TextSpec
from .._tensor_names import (
    BOXES,
    CLASSES,
    COUNT,
    DENSE_BOXES,
    DENSE_SCORES,
    PROBABILITIES,
    RAW_INPUTS,
    SCORES,
    TENSOR_INPUT,
)
from ..errors import RepositoryError

FORMAT = "modelmint/1"
METADATA_FILE = "modelmint.json"
ONNX_FILE = "model.onnx"
OPSET = 17  # the ONNX opset of every model.onnx and of the profiler's frozen-prefix graphs
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "report.json"
WARMUP_DIR = "warmup"


# The V2 datatypes an output may have: numbers (ONNX string outputs are not served).
OUTPUT_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                    "INT64", "FP16", "FP32", "FP64")


@dataclass
class TensorInputSpec:
    """A model fed its FP32 ``input`` as is: no raw (encoded) input, no preprocessing."""

    shape: list[int]  # one item's, without the batch axis
    kind: str = field(default="tensor")

    def __post_init__(self) -> None:
        if (self.kind != "tensor" or not isinstance(self.shape, list) or not self.shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                           for d in self.shape)):
            raise ValueError(f"preprocessing {self.to_json()!r}: expected kind 'tensor' and "
                             "'shape' a non-empty list of positive integers (one item's shape, "
                             "without the batch axis)")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": self.shape}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorInputSpec:
        return cls(shape=data["shape"], kind=data.get("kind", "tensor"))


PreprocessingSpec = ImageSpec | AudioSpec | TextSpec | TensorInputSpec
KINDS = ("image", "audio", "text", "tensor", "letterbox")


def spec_from_json(data: dict[str, Any]) -> PreprocessingSpec:
    """The preprocessing spec of a version, by its ``kind``."""
    kind = data.get("kind", "image")
    if kind == "audio":
        return AudioSpec.from_json(data)
    if kind == "text":
        return TextSpec.from_json(data)
    if kind == "image":
        return ImageSpec.from_json(data)
    if kind == "letterbox":
        return LetterboxSpec.from_json(data)
    if kind == "tensor":
        return TensorInputSpec.from_json(data)
    raise ValueError(f"preprocessing kind {kind!r}; expected one of {list(KINDS)}")




def input_shape(spec: PreprocessingSpec) -> list[int]:
    """The FP32 ``input`` tensor's shape, without the batch axis."""
    if isinstance(spec, ImageSpec):
        return [3, spec.crop, spec.crop]
    return list(spec.shape)


@dataclass
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Any) -> TensorSpec:
        name, datatype, shape = data["name"], data["datatype"], data["shape"]
        if (not isinstance(name, str) or not name or not isinstance(datatype, str)
                or not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise TypeError(data)
        return cls(name, datatype, list(shape))


def detection_signature(spec: LetterboxSpec) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """What a detector serves: ``image`` (BYTES) or ``input`` (FP32 [-1, 3, S, S]) in;
    ``boxes``, ``scores``, ``classes`` and ``count`` out, ``K`` rows per image."""
    k = spec.max_detections
    outputs = [TensorSpec(BOXES, "FP32", [-1, k, 4]), TensorSpec(SCORES, "FP32", [-1, k]),
               TensorSpec(CLASSES, "INT32", [-1, k]), TensorSpec(COUNT, "INT32", [-1])]
    return classifier_inputs(spec), outputs


def detection_graph_outputs(classes: int) -> list[TensorSpec]:
    """What a detector's ``model.onnx`` returns, before the box selection."""
    return [TensorSpec(DENSE_BOXES, "FP32", [-1, -1, 4]),
            TensorSpec(DENSE_SCORES, "FP32", [-1, -1, classes])]


def classifier_inputs(spec: PreprocessingSpec) -> list[TensorSpec]:
    """The inputs a model of this preprocessing kind takes (either one per request)."""
    inputs = [TensorSpec(TENSOR_INPUT, "FP32", [-1, *input_shape(spec)])]
    raw = RAW_INPUTS.get(spec.kind)
    return inputs if raw is None else [*inputs, TensorSpec(raw, "BYTES", [-1])]


def _tensors(data: dict[str, Any], key: str, where: str) -> list[TensorSpec] | None:
    """A stored ``inputs``/``outputs`` list; None when absent (derived from the kind)."""
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, list):
        raise RepositoryError(f"{where}: field {key!r} is {value!r}; expected a list of "
                              '{"name", "datatype", "shape"} objects')
    tensors = []
    for i, item in enumerate(value):
        try:
            tensors.append(TensorSpec.from_json(item))
        except (KeyError, TypeError, ValueError):
            raise RepositoryError(f"{where}: field '{key}[{i}]' is {item!r}; expected "
                                  '{"name": str, "datatype": str, "shape": [int, ...]}') from None
    return tensors


@dataclass
class ModelMetadata:
    name: str
    labels: list[str]  # empty for a model that is not a classifier
    architecture: str
    preprocessing: PreprocessingSpec
    task: str = "image-classification"
    version: int | None = None
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # The declared signature; None: a classifier's (see the module docstring).
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None

    def image_spec(self) -> ImageSpec:
        """The image preprocessing spec, for the image-only paths (export, optimize)."""
        if not isinstance(self.preprocessing, ImageSpec):
            raise RepositoryError(f"model {self.name!r}: a {self.task} version (preprocessing "
                                  f"kind {self.preprocessing.kind!r}); this needs an image model")
        return self.preprocessing

    @property
    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        inputs = self.inputs if self.inputs is not None else classifier_inputs(self.preprocessing)
        outputs = self.outputs if self.outputs is not None else [
            TensorSpec(PROBABILITIES, "FP32", [-1, len(self.labels)])]
        return list(inputs), list(outputs)

    def check_signature(self, where: str) -> None:
        """Refuse a signature the server could not serve; ``where`` names the file or model."""
        inputs, outputs = self.signature
        accepted = {t.name: t for t in classifier_inputs(self.preprocessing)}
        names = [t.name for t in inputs]
        if (TENSOR_INPUT not in names or len(set(names)) != len(names)
                or any(accepted.get(t.name) != t for t in inputs)):
            expected = " and optionally ".join(json.dumps(t.to_json()) for t in accepted.values())
            raise RepositoryError(f"{where}: field 'inputs' is {[t.to_json() for t in inputs]}; "
                                  f"a model of preprocessing kind {self.preprocessing.kind!r} "
                                  f"takes {expected}")
        if not outputs:
            raise RepositoryError(f"{where}: field 'outputs' is empty; declare at least one")
        seen: set[str] = set()
        for i, t in enumerate(outputs):
            what = f"{where}: field 'outputs[{i}]' ({t.name!r})"
            if t.name in seen:
                raise RepositoryError(f"{what}: the name is declared twice")
            seen.add(t.name)
            if t.datatype not in OUTPUT_DATATYPES:
                raise RepositoryError(f"{what}: datatype {t.datatype!r}; expected one of "
                                      f"{', '.join(OUTPUT_DATATYPES)}")
            if not t.shape or t.shape[0] != -1 or any(d < 1 and d != -1 for d in t.shape[1:]):
                raise RepositoryError(f"{what}: shape {t.shape}; expected the batch axis first "
                                      "(-1), then sizes >= 1 (or -1 where they vary)")
            classes = [-1, len(self.labels)]
            if t.name == PROBABILITIES and self.labels and (t.datatype, t.shape) != (
                    "FP32", classes):
                raise RepositoryError(f"{what}: {t.datatype} {t.shape}; with "
                                      f"{len(self.labels)} labels the classification output "
                                      f"is FP32 {classes}")

    def to_json(self) -> dict[str, Any]:
        self.check_signature(f"model {self.name!r}")
        inputs, outputs = self.signature
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "architecture": self.architecture,
            "created": self.created,
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_json(),
            "metrics": self.metrics,
            "provenance": self.provenance,
            "files": {"onnx": ONNX_FILE, "weights": WEIGHTS_FILE, "report": REPORT_FILE,
                      "warmup": WARMUP_DIR},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = METADATA_FILE) -> ModelMetadata:
        if data.get("format") != FORMAT:
            raise RepositoryError(f"{where}: field 'format' is {data.get('format')!r}, "
                                  f"expected {FORMAT!r}")
        try:
            meta = cls(
                name=str(data["name"]),
                labels=[str(x) for x in data.get("labels", [])],
                architecture=str(data["architecture"]),
                preprocessing=spec_from_json(data["preprocessing"]),
                task=str(data.get("task", "image-classification")),
                version=data.get("version"),
                created=str(data.get("created", "")),
                metrics=dict(data.get("metrics", {})),
                provenance=dict(data.get("provenance", {})),
                inputs=_tensors(data, "inputs", where),
                outputs=_tensors(data, "outputs", where),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RepositoryError(f"{where}: missing or malformed field {exc}") from exc
        meta.check_signature(where)
        return meta

    @classmethod
    def load(cls, version_dir: Path) -> ModelMetadata:
        path = version_dir / METADATA_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise RepositoryError(f"{path}: missing") from exc
        except json.JSONDecodeError as exc:
            raise RepositoryError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_json(data, str(path))
