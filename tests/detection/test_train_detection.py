"""Object-detection training: the published version is a detector (signature, ONNX outputs,
letterbox preprocessing) trained by the real ``mint train``; views keep boxes on their objects;
the per-epoch mAP scores what it should; an export that disagrees with torch is refused;
Ctrl-C then ``--resume`` finishes a fixed-epoch run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from modelmint._data.detection import LetterboxSpec, letterbox, select_detections
from modelmint._data.detection_data import load_detection_data
from modelmint._tasks.detection import TASK
from modelmint._tasks.detection.candidates import DetectionCandidate, detection_candidates
from modelmint._tasks.detection.export import export_detector
from modelmint._tasks.detection.features import _augment
from modelmint._tasks.detection.model import Detector
from modelmint._tasks.detection.training import map50
from modelmint._tasks.detection.two_stage import FasterRCNNHead
from modelmint._train import tensorfile
from modelmint.errors import RepositoryError

from .conftest import mint
from .shapes import make_shapes


def test_train_json_reports_detection_metrics(detector_training: dict[str, Any]) -> None:
    result = detector_training["result"]
    assert result["task"] == "object-detection"
    assert result["model"] == "shapes" and result["version"] == 1
    assert 0.0 <= result["map50_95"] <= result["map50"] <= 1.0
    assert result["train_seconds"] > 0


def test_published_version_detects_the_shapes(trained_detector: tuple[Path, str, Path]) -> None:
    repo, name, data_root = trained_detector
    version = repo / name / "1"
    meta = json.loads((version / "modelmint.json").read_text())
    assert meta["task"] == "object-detection"
    assert meta["labels"] == ["circle", "square", "triangle"]
    assert meta["preprocessing"]["kind"] == "letterbox"
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "classes", "count"]
    assert (version / "model.safetensors").exists()
    spec = LetterboxSpec.from_json(meta["preprocessing"])
    assert isinstance(spec, LetterboxSpec)

    data = load_detection_data(data_root, seed=0)
    session = ort.InferenceSession(str(version / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    items = data.val[:3]
    batch = [letterbox(data.path(f), spec) for f, _ in items]
    dense_boxes, dense_scores = session.run(
        ["dense_boxes", "dense_scores"], {"input": np.stack([x for x, _ in batch])})
    assert dense_boxes.shape[0] == dense_scores.shape[0] == 3  # the batch axis is dynamic
    assert dense_boxes.shape[2] == 4 and dense_scores.shape[2] == 3
    assert dense_scores.min() >= 0.0 and dense_scores.max() <= 1.0
    assert dense_boxes.min() >= 0.0 and dense_boxes.max() <= spec.crop
    # The best detection of each image lies on one of its shapes.
    boxes, _, _, count = select_detections(
        dense_boxes, dense_scores, score_threshold=0.0, nms_iou=0.5, max_detections=1)
    hits = 0
    for i, (_, target) in enumerate(items):
        assert count[i] == 1
        best = batch[i][1].to_image(boxes[i, :1])[0]
        truth = np.asarray(target["boxes"], np.float32)
        inside = (truth[:, 0] - 8 <= best[0]) & (best[2] <= truth[:, 2] + 8) & \
            (truth[:, 1] - 8 <= best[1]) & (best[3] <= truth[:, 3] + 8)
        hits += int(inside.any())
    assert hits >= 2, "the detector's best boxes are not on the shapes"


def test_mirrored_and_jittered_views_keep_boxes_on_their_objects() -> None:
    picture = Image.new("RGB", (200, 100), (20, 20, 20))
    picture.paste((250, 250, 250), (10, 20, 60, 90))
    boxes = np.asarray([[10, 20, 60, 90]], np.float32)
    flipped, fboxes, labels = _augment(picture, boxes, [2], 1, 256, 114)
    assert labels == [2]
    np.testing.assert_allclose(fboxes, [[140, 20, 190, 90]], atol=0.5)
    pixels = np.asarray(flipped)
    assert pixels[50, 165].min() > 200 and pixels[50, 35].max() < 60
    torch.manual_seed(3)
    for view in (2, 3):
        out, jboxes, jlabels = _augment(picture, boxes, [2], view, 256, 114)
        assert len(jboxes) == len(jlabels) <= 1
        for x1, y1, x2, y2 in jboxes:
            assert 0 <= x1 < x2 <= out.size[0] and 0 <= y1 < y2 <= out.size[1]
            centre = np.asarray(out)[int((y1 + y2) / 2), int((x1 + x2) / 2)]
            assert centre.min() > 200, "the box moved off the white object"


def test_map50_scores_hits_misses_and_ranking() -> None:
    truth = [{"boxes": [[0, 0, 10, 10]], "labels": [0]},
             {"boxes": [[20, 20, 40, 40]], "labels": [1]}]
    perfect = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]},
               {"boxes": [[20, 20, 40, 40]], "scores": [0.8], "labels": [1]}]
    assert map50(truth, perfect, 2) == pytest.approx(1.0)
    wrong_class = [{**p, "labels": [1 - p["labels"][0]]} for p in perfect]
    assert map50(truth, wrong_class, 2) == 0.0
    shifted = [{**p, "boxes": [[b + 30 for b in p["boxes"][0]]]} for p in perfect]
    assert map50(truth, shifted, 2) == 0.0
    # A confident false positive ranked above the hit halves class 0's precision.
    noisy = [{"boxes": [[50, 50, 60, 60], [0, 0, 10, 10]], "scores": [0.99, 0.5],
              "labels": [0, 0]}, perfect[1]]
    assert map50(truth, noisy, 2) == pytest.approx((0.5 + 1.0) / 2, abs=0.01)


def test_candidates_baseline_first_and_fixed_plan_covers_the_search_space() -> None:
    cands = detection_candidates()
    assert cands[0].kind == "baseline"
    assert {c.name for c in cands} >= {"mobilenet_v2/fcos", "mobilenet_v2/retinanet"}
    assert TASK.fixed_plan is not None
    name, params = TASK.fixed_plan(3)
    fcos = next(c for c in cands if c.name == name)

    class Plan:
        def suggest_float(self, key: str, *a: Any, **k: Any) -> float:
            return float(params[key])

        def suggest_int(self, key: str, *a: Any, **k: Any) -> int:
            return int(params[key])

        def suggest_categorical(self, key: str, choices: list[Any]) -> Any:
            assert params[key] in choices
            return params[key]

    assert isinstance(fcos, DetectionCandidate)
    assert fcos.suggest(Plan())["epochs"] == 3  # type: ignore[arg-type]
    assert set(fcos.first_trial()) == set(params)  # the plan sets every searched parameter


@pytest.mark.parametrize("head", ["retinanet", "faster_rcnn"])
def test_export_refuses_a_graph_that_disagrees(tmp_path: Path, head: str) -> None:
    torch.manual_seed(0)
    model = Detector(2, 128, head, 32, 1).eval()
    sample = torch.randn(2, 3, 128, 128).numpy()
    path = export_detector(model, tmp_path, f"mobilenet_v2+{head}", sample)
    boxes, scores = ort.InferenceSession(str(path)).run(None, {"input": sample})
    rows = model.anchors.shape[0] if head == "retinanet" else 300 * 2  # proposals x classes
    assert boxes.shape == (2, rows, 4) and scores.shape[2] == 2
    with torch.no_grad():
        if isinstance(model.head, FasterRCNNHead):  # one class's logit: the softmax moves
            model.head.roi_heads.box_predictor.cls_score.bias[1] += 1.0
        else:
            model.head.classification_head.cls_logits.bias += 1.0  # type: ignore[union-attr]
    from modelmint._tasks.detection.export import check_detector

    with pytest.raises(RepositoryError, match="differs from torch"):
        check_detector(path, model, sample)


def test_interrupt_then_resume_finishes_the_fixed_plan(tmp_path: Path) -> None:
    data = make_shapes(tmp_path / "shapes", images=16, seed=1, size_range=(160, 220))
    base = tmp_path / "out"
    cmd = mint("train", str(data), "--name", "cut", "--repo", str(base / "models"),
               "--runs-dir", str(base / "runs"), "--epochs", "2", "--seed", "0", "--json")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trial_dir = base / "runs" / "cut-1" / "trials" / "000"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        log = trial_dir / "log.jsonl"  # written after the checkpoint of its epoch
        if (trial_dir / "checkpoint.safetensors").exists() and log.exists() and log.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "mint train --resume" in err
    run_dir = base / "runs" / "cut-1"
    _, meta = tensorfile.load(trial_dir / "checkpoint.safetensors")
    done = int(meta["epoch"])
    assert done == 1
    resumed = subprocess.run(mint("train", "--resume", str(run_dir), "--json"),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["task"] == "object-detection" and result["version"] == 1
    epochs = [json.loads(line)["epoch"] for line in
              (trial_dir / "log.jsonl").read_text().splitlines()]
    # The retried trial went on from its checkpoint instead of starting again at epoch 1.
    assert epochs == [1, 2]  # started again, it would have logged epoch 1 twice
