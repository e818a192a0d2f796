"""``modelmint.json``: everything a server or SDK needs to use a version without the trainer.

Schema (``format: modelmint/1``)::

    name, version, task ("image-classification"), architecture, created
    inputs / outputs: [{name, datatype, shape}]   (V2 datatypes; -1 = dynamic)
    labels: [str]                                 (index = class id)
    preprocessing: ImageSpec.to_json()
    metrics: {val_accuracy, ...}
    provenance: {data_root, data_fingerprint, split: {train, val}, backbone, hyperparameters, ...}
    files: {onnx: "model.onnx", weights: "model.safetensors", report: "report.json"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.preprocess import ImageSpec
from ..errors import RepositoryError

FORMAT = "modelmint/1"
METADATA_FILE = "modelmint.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "report.json"
WARMUP_DIR = "warmup"


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
    preprocessing: ImageSpec
    task: str = "image-classification"
    version: int | None = None
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return image_classifier_signature(len(self.labels), self.preprocessing.crop)

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
                preprocessing=ImageSpec.from_json(data["preprocessing"]),
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
