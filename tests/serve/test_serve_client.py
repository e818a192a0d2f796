"""``modelmint._client.predict`` over a server and in-process give the same answers, and one bad
file never fails the others."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from modelmint._client import Prediction, find_images, predict, print_predictions
from modelmint.errors import InvalidInput, NotFound

LABELS = ["ants", "bees"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, samples: list[Path]) -> Path:
    """6 good images (nested), one corrupt .jpg, and files that must be skipped."""
    root = tmp_path_factory.mktemp("photos")
    for i, path in enumerate(samples):
        target = root / ("sub" if i % 2 else "") / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / ".hidden.jpg").write_bytes(samples[0].read_bytes())
    (root / ".cache").mkdir()
    shutil.copy(samples[0], root / ".cache" / "x.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_find_images_skips_hidden_and_non_images(folder: Path) -> None:
    found, missing = find_images([folder, folder / "nope.png"])
    names = [p.name for p in found]
    assert "broken.jpg" in names and len(names) == 7
    assert not any(n.startswith(".") or n.endswith(".txt") for n in names)
    assert missing == [folder / "nope.png"]


def test_url_and_repo_agree_and_match_onnxruntime(
        folder: Path, server_url: str, repo_root: Path,
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    over_http = predict([folder], "tiny", url=server_url, top_k=2)
    local = predict([folder], "tiny", repo=repo_root, top_k=2)
    assert [p.file for p in over_http] == [p.file for p in local]
    assert len(over_http) == 7
    good = [p for p in over_http if p.error is None]
    assert len(good) == 6
    (bad,) = [p for p in over_http if p.error is not None]
    assert bad.file.endswith("broken.jpg") and "not a decodable image" in bad.error
    assert bad.label is None and bad.to_json()["error"] == bad.error

    for remote, here in zip(over_http, local, strict=True):
        assert remote.label == here.label
        assert remote.error is None or here.error is not None
        for (l1, s1), (l2, s2) in zip(remote.top_k, here.top_k, strict=True):
            assert l1 == l2 and s1 == pytest.approx(s2, abs=1e-6)

    probs = reference_probs([Path(p.file).read_bytes() for p in good])
    for pred, p in zip(good, probs, strict=True):
        assert pred.label == LABELS[int(np.argmax(p))]
        assert pred.score == pytest.approx(float(p.max()), abs=1e-6)
        assert [lb for lb, _ in pred.top_k] == [LABELS[i] for i in np.argsort(-p)]
        doc = pred.to_json()
        assert set(doc) == {"file", "label", "score", "top_k"}
        assert doc["top_k"][0] == {"label": pred.label, "score": pred.score}


def test_batches_larger_than_one_request(samples: list[Path], server_url: str) -> None:
    many = samples * 6  # 36 files -> 3 requests of at most 16
    preds = predict(many, "tiny", url=server_url, top_k=1)
    assert len(preds) == 36 and all(p.error is None and len(p.top_k) == 1 for p in preds)
    assert [p.label for p in preds[:6]] == [p.label for p in preds[6:12]]


def test_missing_file_is_reported(tmp_path: Path, server_url: str, samples: list[Path]) -> None:
    preds = predict([tmp_path / "gone.jpg", samples[0]], "tiny", url=server_url)
    assert preds[0].error == "no such file or directory"
    assert preds[1].error is None and preds[1].label in LABELS


def test_errors_about_every_file_raise(samples: list[Path], server_url: str,
                                       repo_root: Path) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        predict(samples[:1], "nope", url=server_url)
    with pytest.raises(NotFound, match="'nope'"):
        predict(samples[:1], "nope", repo=repo_root)
    with pytest.raises(NotFound, match="version 9"):
        predict(samples[:1], "tiny", url=server_url, version=9)
    with pytest.raises(InvalidInput, match="exactly one of url"):
        predict(samples[:1], "tiny")
    with pytest.raises(InvalidInput, match="top_k"):
        predict(samples[:1], "tiny", repo=repo_root, top_k=0)


def test_repo_path_can_pick_an_older_version(samples: list[Path], repo_root: Path) -> None:
    v1 = predict(samples, "tiny", repo=repo_root, version=1)
    v2 = predict(samples, "tiny", repo=repo_root, version=2)
    assert [p.score for p in v1] != [p.score for p in v2]  # different weights per version


def test_print_predictions() -> None:
    console = Console(record=True, width=120)
    print_predictions([
        Prediction("a/ant[1].jpg", "ants", 0.91, [("ants", 0.91), ("bees", 0.09)]),
        Prediction("b.jpg", error="b.jpg: not a decodable image"),
    ], console)
    text = console.export_text()
    assert "a/ant[1].jpg" in text and "0.910" in text and "bees 0.090" in text
    assert "not a decodable image" in text
