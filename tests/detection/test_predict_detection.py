"""``mint predict`` with a detector, through a live server (--url) and in-process (--repo):
labelled boxes per image in the table and in ``--json``, ``--score-threshold``, and annotated
copies written by ``--save-dir``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detection.tiny_detector import picture, publish_detector
from live_server import full_server
from modelmint.cli import app

TOLERANCE = 4.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict-detector")
    publish_detector(root)
    return root


@pytest.fixture(scope="module")
def url(repo: Path) -> Iterator[str]:
    with full_server(repo, grpc_port=None) as (server, _):
        yield server.url


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    (folder / "wide.png").write_bytes(
        picture(640, 480, [("red", (100, 120, 260, 280)), ("dim-green", (400, 300, 500, 420))]))
    (folder / "tall.jpg").write_bytes(picture(300, 500, [("blue", (30, 200, 130, 330))], "JPEG"))
    (folder / "blank.png").write_bytes(picture(200, 100, []))
    (folder / "notes.txt").write_text("not a picture")
    return folder


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["predict", *args])
    return result.exit_code, result.output


def rows(output: str) -> dict[str, dict[str, object]]:
    return {Path(str(doc["file"])).name: doc for doc in map(json.loads, output.splitlines())}


def boxes(doc: dict[str, object]) -> dict[str, list[float]]:
    detections = doc["detections"]
    assert isinstance(detections, list)
    return {d["label"]: d["box"] for d in detections}


def test_json_over_http_gives_each_images_boxes(url: str, images: Path) -> None:
    code, output = run(*(str(images / n) for n in ("wide.png", "tall.jpg", "blank.png",
                                                    "notes.txt", "missing.png")),
                       "--model", "shapes", "--url", url, "--json")
    assert code == 0, output
    found = rows(output)
    assert list(found) == ["missing.png", "wide.png", "tall.jpg", "blank.png", "notes.txt"]
    wide = boxes(found["wide.png"])
    np.testing.assert_allclose(wide["red"], [100, 120, 260, 280], atol=TOLERANCE)
    np.testing.assert_allclose(wide["green"], [400, 300, 500, 420], atol=TOLERANCE)
    first = found["wide.png"]["detections"]
    assert isinstance(first, list) and first[0]["label"] == "red"  # best first
    assert first[0]["score"] == pytest.approx(1.0, abs=0.01)
    np.testing.assert_allclose(boxes(found["tall.jpg"])["blue"], [30, 200, 130, 330],
                               atol=TOLERANCE + 2)  # JPEG blurs the edges a little
    assert found["blank.png"]["detections"] == []
    assert "error" not in found["blank.png"]
    assert "image" in str(found["notes.txt"]["error"])
    assert found["missing.png"]["error"] == "no such file or directory"


def test_score_threshold_drops_weaker_boxes(url: str, images: Path) -> None:
    code, output = run(str(images / "wide.png"), "--model", "shapes", "--url", url, "--json",
                       "--score-threshold", "0.7")
    assert code == 0, output
    assert list(boxes(rows(output)["wide.png"])) == ["red"]
    code, output = run(str(images / "wide.png"), "--model", "shapes", "--url", url,
                       "--score-threshold", "1.5")
    assert code != 0 and "score_threshold" in output


def test_table_from_the_repository(repo: Path, images: Path) -> None:
    code, output = run(str(images), "--model", "shapes", "--repo", str(repo))
    assert code == 0, output
    assert "red" in output and "green" in output and "blue" in output
    assert "no detections" in output  # blank.png
    assert "1.000" in output and "0.588" in output
    assert "100.0, 120.0, 260.0, 280.0" in output


def test_save_dir_writes_annotated_copies(url: str, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated"
    code, output = run(str(images / "wide.png"), str(images / "tall.jpg"), "--model",
                       "shapes", "--url", url, "--save-dir", str(out))
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["tall.jpg", "wide.png"]
    original = np.asarray(Image.open(images / "wide.png").convert("RGB")).astype(int)
    drawn = np.asarray(Image.open(out / "wide.png").convert("RGB")).astype(int)
    assert drawn.shape == original.shape
    # The red box's left edge, below its label, is outlined (in the first label's colour);
    # far from every box, the picture is untouched.
    assert ((drawn[200, 96:104] == [230, 25, 75]).all(axis=1)).any()
    assert not ((original[200, 96:104] == [230, 25, 75]).all(axis=1)).any()
    assert (drawn[10:60, 560:630] == original[10:60, 560:630]).all()
    with Image.open(out / "tall.jpg") as copy:
        assert copy.format == "JPEG" and copy.size == (300, 500)
