"""``mint optimize`` on the real trained hymenoptera model: INT8 meets the gate, and the
published version is served by the DataPlane with the original's answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from modelmint._data.preprocess import preprocess
from modelmint._optimize.select import MIN_AGREEMENT
from modelmint._repository import ONNX_FILE, ModelRepository
from modelmint._search.run import TrainResult
from modelmint._serve.dataplane import DataPlane
from modelmint._serve.types import InferInput, InferRequest, RequestedOutput
from modelmint.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def optimized(trained: TrainResult, trained_repo: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, dict[str, object]]:
    # A private copy: the session repository's latest version must stay what other tests expect.
    repo = tmp_path_factory.mktemp("optimize") / "models"
    source = trained_repo / trained.model / str(trained.version)
    shutil.copytree(source, repo / trained.model / "1")
    result = CliRunner().invoke(app, ["optimize", str(repo / trained.model), "--rounds", "1",
                                      "--iters", "2", "--json"])
    assert result.exit_code == 0, result.output
    return repo, json.loads(result.stdout.strip().splitlines()[-1])


def test_int8_meets_the_gate_on_the_trained_model(optimized: tuple[Path, dict[str, object]]
                                                  ) -> None:
    _, out = optimized
    report = out["report"]
    assert isinstance(report, dict)
    passed = [q for q in report["quantization"] if q["passed"]]
    assert passed, f"no INT8 variant met the gate: {report['quantization']}"
    q = passed[0]
    assert q["val_drop_points"] <= 1.0 and q["agreement_with_fp32"] >= 98.0
    assert q["config"]["activations"] == "QUInt8" and q["config"]["weights"] == "QInt8"
    names = {row["candidate"] for row in report["candidates"]}
    assert {"ort-fp32", "torch-eager", "torch-channels-last", q["config"]["name"]} <= names
    assert out["chosen"] in names and report["reason"]


def test_published_version_serves_the_original_answers(
        optimized: tuple[Path, dict[str, object]], trained: TrainResult) -> None:
    repo, out = optimized
    version = out["version"]
    assert version == 2
    ref = ModelRepository(repo).version(trained.model, 2)
    meta = ref.metadata()
    val = [Path(meta.provenance["data_root"]) / rel for rel, _ in meta.provenance["split"]["val"]]
    original = ort.InferenceSession(str(repo / trained.model / "1" / ONNX_FILE),
                                    providers=["CPUExecutionProvider"])
    x = np.stack([preprocess(f, meta.preprocessing) for f in val])
    want = original.run(["probabilities"], {"input": x})[0].argmax(axis=1)

    plane = DataPlane(repo)
    plane.load()
    try:
        got = []
        for i in range(0, len(val), 16):
            blobs = np.empty(len(val[i:i + 16]), dtype=np.object_)
            blobs[:] = [f.read_bytes() for f in val[i:i + 16]]
            request = InferRequest(inputs=[InferInput("image", "BYTES", [len(blobs)], blobs)],
                                   outputs=[RequestedOutput("probabilities")])
            response = plane.infer_sync(trained.model, 2, request)
            got.append(np.asarray(response.output("probabilities").data).argmax(axis=1))
    finally:
        plane.close()
    agreement = float((np.concatenate(got) == want).mean())
    if out["published"] == "ort-fp32":
        assert agreement == 1.0
    else:  # INT8 may change an answer, within the gate's bound
        assert agreement >= MIN_AGREEMENT - 0.02, agreement
    assert (ref.path / "optimize.json").is_file()
