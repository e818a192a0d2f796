"""Publish a trained model as a new version: ``model.onnx`` and its weights (written and checked
by the model's own ``export``), ``modelmint.json``, ``report.json``, ``report.html`` and the
recorded ``warmup/`` requests. Every plan and every task publishes through
:func:`publish_version`, so every version carries the same files."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .._data.dataset import TaskData
from .._repository import (
    METADATA_FILE,
    REPORT_FILE,
    WARMUP_DIR,
    ModelMetadata,
    ModelRepository,
    VersionRef,
    open_repository,
)
from .._repository.metadata import spec_from_json
from .._serve.v2client import warmup_request
from .._tasks.contract import Fitted, Task
from .._tensor_names import PROBABILITIES, TENSOR_INPUT

if TYPE_CHECKING:
    from torch import nn

REPORT_HTML = "report.html"


def _warmup(meta: ModelMetadata, payload: Any) -> dict[str, Any]:
    """One recorded request: a raw BYTES item for a model with a raw input, else an FP32 item
    of its ``input`` tensor."""
    inputs, outputs = meta.signature
    names = {t.name for t in outputs}
    classify = PROBABILITIES in names and bool(meta.labels)
    raw = next((t.name for t in inputs if t.datatype == "BYTES"), None)
    if raw is not None and isinstance(payload, bytes):
        return warmup_request(raw, [payload], classification=1 if classify else None)
    return warmup_request(TENSOR_INPUT, np.asarray(payload, np.float32)[None],
                          classification=1 if classify else None)


class Exportable(Protocol):
    """What publishing needs of a trained model (every task's ``Fitted`` is one)."""

    def export(self, directory: Path) -> None: ...
    def warmup_payloads(self) -> list[Any]: ...


def version_metadata(name: str, task: Task, data: TaskData, fitted: Fitted,
                     evaluation: dict[str, Any], provenance: dict[str, Any]) -> ModelMetadata:
    """``modelmint.json`` of a trained model: its task, labels, preprocessing, serving
    signature (the task's own, or a classifier's), metrics and provenance."""
    signature = task.signature(data, fitted) if task.signature is not None else None
    return ModelMetadata(
        name=name, labels=list(data.labels), architecture=fitted.architecture,
        preprocessing=spec_from_json(fitted.preprocessing), task=data.task,
        metrics=task.version_metrics(evaluation), provenance=provenance,
        inputs=signature[0] if signature else None, outputs=signature[1] if signature else None)


def publish_version(repo: str | Path | ModelRepository, meta: ModelMetadata, fitted: Exportable,
                    report: dict[str, Any] | None = None, html_text: str | None = None
                    ) -> VersionRef:
    """Write the version into a hidden folder and publish it atomically under the next free
    number (see :meth:`ModelRepository.publish`); ``repo`` may be an ``s3://`` URI."""

    def write(tmp: Path, version: int) -> None:
        fitted.export(tmp)
        meta.version = version
        meta.created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        (tmp / METADATA_FILE).write_text(json.dumps(meta.to_json(), indent=2))
        (tmp / REPORT_FILE).write_text(json.dumps(report or {}, indent=2, default=str))
        if html_text is not None:
            (tmp / REPORT_HTML).write_text(html_text)
        warmup = tmp / WARMUP_DIR
        warmup.mkdir(exist_ok=True)
        for i, payload in enumerate(fitted.warmup_payloads()):
            (warmup / f"request-{i:03d}.json").write_text(json.dumps(_warmup(meta, payload)))

    return open_repository(repo).publish(meta.name, write)


def publish_classifier(repo: ModelRepository, classifier: nn.Module, meta: ModelMetadata,
                       report: dict[str, Any] | None = None,
                       warmup_images: Sequence[bytes] = ()) -> VersionRef:
    """Publish a torch image classifier trained elsewhere (``input`` [batch, 3, crop, crop] ->
    logits) as a version of ``meta.name``: the same export, check and files as a trained one."""
    import torch

    from .._tasks.image.candidates import ImageFitted

    spec = meta.image_spec()
    # A fixed random batch checks the exported graph against the module, as training does.
    sample = torch.randn(2, 3, spec.crop, spec.crop,
                         generator=torch.Generator().manual_seed(0)).numpy()
    fitted = ImageFitted(meta.architecture, spec.to_json(), {}, classifier.eval(),
                         np.empty((0, len(meta.labels)), np.float32), list(warmup_images),
                         sample)
    return publish_version(repo, meta, fitted, report)
