"""``modelmint.json``: everything a server or SDK needs to use a version without the trainer.

Schema (``format: modelmint/1``)::

    name, version, task ("image-/audio-/text-classification"), architecture, created
    inputs / outputs: [{name, datatype, shape}]   (V2 datatypes; -1 = dynamic)
    labels: [str]                                 (index = class id)
    preprocessing: ImageSpec | AudioSpec | TextSpec .to_json(), chosen by its "kind"
                   (absent kind: image, as every version before issue 6 wrote it)
    metrics: {val_accuracy, ...}
    provenance: {data_root, data_fingerprint, split: {train, val}, backbone, hyperparameters, ...}
    files: {onnx: "model.onnx", weights: "model.safetensors", report: "report.json"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._data.audio import AudioSpec
from .._data.preprocess import ImageSpec
from .._data.text import TextSpec
from ..errors import RepositoryError

FORMAT = "modelmint/1"
METADATA_FILE = "modelmint.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "report.json"
WARMUP_DIR = "warmup"


PreprocessingSpec = ImageSpec | AudioSpec | TextSpec
# The raw (encoded) input each modality accepts beside the preprocessed FP32 ``input``.
RAW_INPUTS = {"image": "image", "audio": "audio", "text": "text"}


def spec_from_json(data: dict[str, Any]) -> PreprocessingSpec:
    """The preprocessing spec of a version, by its ``kind``."""
    kind = data.get("kind", "image")
    if kind == "audio":
        return AudioSpec.from_json(data)
    if kind == "text":
        return TextSpec.from_json(data)
    if kind == "image":
        return ImageSpec.from_json(data)
    raise ValueError(f"preprocessing kind {kind!r}; expected one of {sorted(RAW_INPUTS)}")


preprocessing_from_json = spec_from_json  # the name search/publish.py looks up


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


def image_classifier_signature(num_classes: int, crop: int = 224
                               ) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The two inputs (either one per request) and one output of every image classifier."""
    inputs = [TensorSpec("input", "FP32", [-1, 3, crop, crop]), TensorSpec("image", "BYTES", [-1])]
    outputs = [TensorSpec("probabilities", "FP32", [-1, num_classes])]
    return inputs, outputs


@dataclass
class ModelMetadata:
    name: str
    labels: list[str]
    architecture: str
    preprocessing: PreprocessingSpec
    task: str = "image-classification"
    version: int | None = None
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def image_spec(self) -> ImageSpec:
        """The image preprocessing spec, for the image-only paths (export, optimize)."""
        if not isinstance(self.preprocessing, ImageSpec):
            raise RepositoryError(f"model {self.name!r}: a {self.task} version (preprocessing "
                                  f"kind {self.preprocessing.kind!r}); this needs an image model")
        return self.preprocessing

    @property
    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        spec = self.preprocessing
        if isinstance(spec, ImageSpec):
            return image_classifier_signature(len(self.labels), spec.crop)
        inputs = [TensorSpec("input", "FP32", [-1, *input_shape(spec)]),
                  TensorSpec(RAW_INPUTS[spec.kind], "BYTES", [-1])]
        return inputs, [TensorSpec("probabilities", "FP32", [-1, len(self.labels)])]

    def to_json(self) -> dict[str, Any]:
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
            return cls(
                name=str(data["name"]),
                labels=[str(x) for x in data["labels"]],
                architecture=str(data["architecture"]),
                preprocessing=spec_from_json(data["preprocessing"]),
                task=str(data.get("task", "image-classification")),
                version=data.get("version"),
                created=str(data.get("created", "")),
                metrics=dict(data.get("metrics", {})),
                provenance=dict(data.get("provenance", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RepositoryError(f"{where}: missing or malformed field {exc}") from exc

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
