"""The offline SDK of a detector: its zip is built and unpacked, and its predict.py — run in a
fresh interpreter that sees only the SDK folder (``-I``) and proven not to import modelmint or
torch — must return the served model's boxes for the same images (within 1e-3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detection.tiny_detector import LABELS, picture, publish_detector
from modelmint._app.sdk import build_sdk, vendored_source
from modelmint._serve import DataPlane
from modelmint._serve.detection import detection_request, read_detections

IMPORT_CHECK = ("import sys; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
                "('modelmint', 'torch')); print(json.dumps({'imported': bad}))")


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(publish_detector(tmp_path_factory.mktemp("sdk-detector")).path)


@pytest.fixture(scope="module")
def sdk_dir(version_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    name, data = build_sdk(version_dir)
    folder = tmp_path_factory.mktemp("sdk")
    (folder / name).write_bytes(data)
    with zipfile.ZipFile(folder / name) as zf:
        zf.extractall(folder / "unpacked")
    return next((folder / "unpacked").iterdir())


def run_sdk(sdk_dir: Path, args: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    code = (f"import json, runpy, sys; sys.argv = ['predict.py', *{args!r}]; "
            f"runpy.run_path('predict.py', run_name='__main__'); {IMPORT_CHECK}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # -I ignores PYTHONPATH and the cwd, so the SDK folder goes on sys.path by hand.
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                          f"{str(sdk_dir)!r}); {code}"], cwd=sdk_dir, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    return lines[:-1], lines[-1]["imported"]


def test_sdk_ships_the_detection_module_and_pillow(sdk_dir: Path) -> None:
    modules = sorted(p.name for p in (sdk_dir / "modelmint_sdk").iterdir())
    assert modules == ["__init__.py", "detection.py", "errors.py", "predictor.py",
                       "preprocess.py"]
    assert "pillow" in (sdk_dir / "requirements.txt").read_text()
    assert json.loads((sdk_dir / "labels.json").read_text()) == LABELS
    source = vendored_source("letterbox")
    assert "from .preprocess import " in source and "from .." not in source


def test_sdk_detections_equal_the_served_ones(version_dir: Path, sdk_dir: Path,
                                              tmp_path: Path) -> None:
    images = {"wide.png": picture(640, 480, [("red", (100, 120, 260, 280)),
                                             ("dim-green", (400, 300, 500, 420))]),
              "tall.jpg": picture(300, 500, [("blue", (31, 203, 129, 331))], "JPEG"),
              "blank.png": picture(64, 64, [])}
    for name, blob in images.items():
        (tmp_path / name).write_bytes(blob)
    rows, imported = run_sdk(sdk_dir, [str(tmp_path / n) for n in images])
    assert imported == []
    dataplane = DataPlane(version_dir.parents[1])
    try:
        dataplane.load()
        response = dataplane.infer_sync("shapes", None, detection_request(list(images.values()),
                                                                           {}))
    finally:
        dataplane.close()
    served = read_detections(response, LABELS)
    assert [r["file"] for r in rows] == [str(tmp_path / n) for n in images]
    assert [len(r["detections"]) for r in rows] == [2, 1, 0]
    for row, want in zip(rows, served, strict=True):
        assert [d["label"] for d in row["detections"]] == [d.label for d in want]
        np.testing.assert_allclose([d["box"] for d in row["detections"]] or np.empty((0, 4)),
                                   [d.box for d in want] or np.empty((0, 4)), atol=1e-3)
        np.testing.assert_allclose([d["score"] for d in row["detections"]],
                                   [d.score for d in want], atol=1e-3)
    strict, _ = run_sdk(sdk_dir, [str(tmp_path / "wide.png"), "--score-threshold", "0.7"])
    assert [d["label"] for d in strict[0]["detections"]] == ["red"]
