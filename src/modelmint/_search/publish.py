"""Publish a search's winner as a new model version: ONNX (checked against the trained model by
the candidate's ``export``), ``modelmint.json``, ``report.json``, ``report.html``, warm-up
requests."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

from .._data.dataset import TaskData
from .._repository import METADATA_FILE, REPORT_FILE, WARMUP_DIR, ModelMetadata, ModelRepository
from .._repository import metadata as metadata_module
from .._tasks.contract import Fitted

REPORT_HTML = "report.html"


def _preprocessing(task: str, spec: dict[str, Any]) -> Any:
    # Part B generalises ModelMetadata to audio/text specs; until then only images exist.
    from_json = getattr(metadata_module, "preprocessing_from_json", None)
    if from_json is not None:
        return from_json(spec)
    from .._data.preprocess import ImageSpec

    return ImageSpec.from_json(spec)


def _warmup_request(meta: ModelMetadata, payload: bytes) -> dict[str, Any]:
    inputs, _ = meta.signature
    name = next((t.name for t in inputs if t.datatype == "BYTES"), inputs[0].name)
    from .._serve.codec import BASE64_INPUTS  # text inputs travel as plain JSON strings

    value = (base64.b64encode(payload).decode("ascii") if name in BASE64_INPUTS
             else payload.decode("utf-8"))
    return {"inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": [value]}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]}


def publish_winner(repo: str | Path, name: str, data: TaskData, fitted: Fitted,
                   report: dict[str, Any], html_text: str, provenance: dict[str, Any]
                   ) -> tuple[int, Path]:
    evaluation = report["evaluation"]
    meta = ModelMetadata(
        name=name, labels=list(data.labels), architecture=fitted.architecture,
        preprocessing=_preprocessing(data.task, fitted.preprocessing), task=data.task,
        metrics={"val_accuracy": evaluation["accuracy"], "macro_f1": evaluation["macro_f1"],
                 "val_samples": evaluation["samples"], **evaluation["top_k"]},
        provenance=provenance)

    def write(tmp: Path, version: int) -> None:
        fitted.export(tmp)
        meta.version = version
        meta.created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        (tmp / METADATA_FILE).write_text(json.dumps(meta.to_json(), indent=2))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
        (tmp / REPORT_HTML).write_text(html_text)
        warmup = tmp / WARMUP_DIR
        warmup.mkdir(exist_ok=True)
        for i, payload in enumerate(fitted.warmup_payloads()):
            (warmup / f"request-{i:03d}.json").write_text(
                json.dumps(_warmup_request(meta, payload)))

    ref = ModelRepository(repo).publish(name, write)
    return ref.version, ref.path
