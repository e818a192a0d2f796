"""Training on the real sample set: accuracy, published artifacts, export agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file

from modelmint._data.preprocess import preprocess
from modelmint._repository import ModelMetadata, ModelRepository
from modelmint._search.run import TrainResult
from modelmint._train.backbone import MOBILENET_V2, build


def test_trained_model_is_accurate_and_reports_the_placeholder(trained: TrainResult) -> None:
    assert trained.val_accuracy >= 0.90
    assert trained.version == 1 and trained.epochs >= 1
    assert any("imageNotFound.gif" in w and "format outlier" in w for w in trained.warnings)
    report = trained.report["evaluation"]
    assert set(report["per_class"]) == {"ants", "bees"}
    assert report["samples"] == 153
    cm = np.array(report["confusion_matrix"]["rows_true_cols_predicted"])
    assert cm.sum() == 153 and np.trace(cm) / 153 == report["accuracy"]
    assert len(report["misclassified"]) == 153 - np.trace(cm)


def test_version_directory_is_complete(trained: TrainResult, trained_repo: Path) -> None:
    ref = ModelRepository(trained_repo).version("bees")
    names = {p.name for p in ref.path.iterdir()}
    assert {"model.onnx", "model.safetensors", "modelmint.json", "report.json", "report.html",
            "warmup"} <= names
    assert len(list((ref.path / "warmup").glob("*.json"))) == 3
    raw = json.loads((ref.path / "modelmint.json").read_text())
    meta = ModelMetadata.from_json(raw)
    assert meta.labels == ["ants", "bees"] and meta.version == 1
    assert raw["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}
    assert raw["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    prov = meta.provenance
    assert len(prov["split"]["train"]) == 245 and len(prov["split"]["val"]) == 153
    assert len(prov["data_fingerprint"]) == 64 and prov["backbone"]["name"] == "mobilenet_v2"
    run = Path(trained.run_dir)
    assert len(json.loads((run / "split.json").read_text())["val"]) == 153
    assert json.loads((run / "run.json").read_text())["status"] == "published"


def test_onnx_matches_torch_on_real_images(trained_repo: Path, hymenoptera: Path) -> None:
    ref = ModelRepository(trained_repo).version("bees")
    model = build(MOBILENET_V2, 2, pretrained=False)
    model.load_state_dict(load_file(str(ref.path / "model.safetensors")))
    files = sorted((hymenoptera / "val" / "ants").iterdir())[:8]
    batch = np.stack([preprocess(f) for f in files])
    with torch.inference_mode():
        expected = model.eval()(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(ref.path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probabilities"], {"input": batch})
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    single = session.run(["logits"], {"input": batch[:1]})[0]  # dynamic batch axis
    np.testing.assert_allclose(single, expected[:1], atol=1e-4, rtol=0)
