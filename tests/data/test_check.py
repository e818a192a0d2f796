"""Layouts, the seeded split and the data check on real and deliberately broken folders."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelmint._data import check_dataset, discover
from modelmint.errors import DataError


def jpeg(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_flat(root: Path, per_class: int = 25, classes: tuple[str, ...] = ("cat", "dog"),
              seed: int = 0) -> Path:
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{i}.jpg").write_bytes(jpeg(seed + ci * 1000 + i))
    return root


def test_sample_set_flags_the_placeholder_gif(hymenoptera: Path) -> None:
    report = check_dataset(discover(hymenoptera))
    flagged = {i.path: i for i in report.issues}
    gif = flagged["train/ants/imageNotFound.gif"]
    assert gif.severity == "warning" and "format outlier: GIF" in gif.reason
    assert report.counts["val"] == {"ants": 70, "bees": 83}
    assert report.counts["train"] == {"ants": 124, "bees": 121}  # kept: only a warning
    strict = check_dataset(discover(hymenoptera), strict=True)
    assert strict.counts["train"]["ants"] == 123
    assert strict.skipped == ["train/ants/imageNotFound.gif"]


def test_flat_layout_gets_a_seeded_stratified_split(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "d", per_class=25)
    a, b = discover(root, seed=3), discover(root, seed=3)
    assert [s.path for s in a.val] == [s.path for s in b.val]
    assert {s.label for s in a.val} == {"cat", "dog"}
    assert sum(s.label == "cat" for s in a.val) == 5  # 20% of 25, per class
    assert len(a.train) == 40 and "stratified" in a.split_source
    other = discover(root, seed=4)
    assert [s.path for s in other.val] != [s.path for s in a.val]


def test_split_folder_aliases_and_hidden_files(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_flat(root / "train", per_class=3)
    make_flat(root / "validation", per_class=2, seed=100_000)
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / ".cache").mkdir()
    layout = discover(root)
    assert len(layout.train) == 6 and len(layout.val) == 4 and layout.split_source == "folders"


def test_bad_layouts_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "missing")
    make_flat(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="at least 2"):
        discover(tmp_path / "one")
    make_flat(tmp_path / "two" / "train", per_class=2)
    make_flat(tmp_path / "two" / "val", per_class=1, classes=("cat", "cow"))
    with pytest.raises(DataError, match="cow"):
        discover(tmp_path / "two")


def test_check_reports_every_kind_of_problem(tmp_path: Path, hymenoptera: Path) -> None:
    root = tmp_path / "d"
    make_flat(root / "train", per_class=25)
    make_flat(root / "val", per_class=6, seed=100_000)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / "truncated.jpg").write_bytes(jpeg(1)[:100])
    shutil.copy(root / "train" / "cat" / "0.jpg", root / "train" / "cat" / "copy.jpg")
    shutil.copy(root / "val" / "dog" / "0.jpg", root / "train" / "dog" / "leak.jpg")
    (root / "train" / "dog" / "tiny.jpg").write_bytes(jpeg(7, size=(16, 16)))
    shutil.copy(hymenoptera / "train/ants/imageNotFound.gif", root / "train" / "cat" / "x.gif")

    report = check_dataset(discover(root))
    by_path = {i.path: i for i in report.issues}
    assert by_path["train/cat/notes.txt"].severity == "error"
    assert by_path["train/cat/truncated.jpg"].severity == "error"
    assert "exact duplicate of train/cat/0.jpg" in by_path["train/cat/copy.jpg"].reason
    assert "leakage" in by_path["train/dog/leak.jpg"].reason
    assert "tiny image 16x16" in by_path["train/dog/tiny.jpg"].reason
    assert "format outlier: GIF" in by_path["train/cat/x.gif"].reason
    assert report.skipped == ["train/cat/notes.txt", "train/cat/truncated.jpg"]
    assert any("validation set has only 12 images" in w for w in report.warnings)

    strict = check_dataset(discover(root), strict=True)
    assert {"train/cat/copy.jpg", "train/dog/leak.jpg", "train/dog/tiny.jpg",
            "train/cat/x.gif"} <= set(strict.skipped)
    assert strict.counts["val"]["dog"] == 6  # a leak drops the train copy, never the val one
    assert strict.fingerprint != report.fingerprint


def test_small_classes_and_imbalance_are_warned(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_flat(root, per_class=40, classes=("big",))
    (root / "small").mkdir()
    for i in range(10):
        (root / "small" / f"{i}.jpg").write_bytes(jpeg(5000 + i))
    report = check_dataset(discover(root))
    assert any("'small' has only 10" in w for w in report.warnings)
    assert any("imbalanced" in w for w in report.warnings)
