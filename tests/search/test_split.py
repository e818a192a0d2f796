"""--group-by and --reject-dir mechanics (task-independent), task detection, image loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelmint._data.dataset import TaskData
from modelmint._data.layout import add_reject_class, split_items
from modelmint._tasks.contract import LoadOptions
from modelmint._tasks.registry import detect_task, load_task_data
from modelmint.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
DIGITS = SHARED / "spoken_digits"


def _digit_items() -> list[tuple[str, int]]:
    files = sorted(DIGITS.glob("*/*.wav"))
    if not files:
        pytest.skip(f"sample data missing: {DIGITS}")
    return [(f.relative_to(DIGITS).as_posix(), int(f.parent.name)) for f in files]


def test_group_by_keeps_every_speaker_on_one_side() -> None:
    items = _digit_items()
    train, val, groups, note = split_items(items, seed=0, group_by="_([a-z]+)_")
    train_speakers = {groups[i] for i, _ in train}
    val_speakers = {groups[i] for i, _ in val}
    assert train_speakers and val_speakers
    assert not train_speakers & val_speakers
    assert len(train) + len(val) == len(items)
    assert set(train_speakers | val_speakers) == set(groups.values())
    assert "grouped" in note and "--group-by" in note
    # About a fifth held out: one of six speakers.
    assert 0.1 < len(val) / len(items) < 0.3
    # Seeded: the same split again.
    assert split_items(items, seed=0, group_by="_([a-z]+)_")[1] == val


def test_random_split_is_stratified_and_mixes_speakers() -> None:
    items = _digit_items()
    train, val, groups, note = split_items(items, seed=0)
    assert groups == {} and "stratified" in note
    assert {y for _, y in val} == set(range(10))
    speakers = {i.split("_")[1] for i, _ in train} & {i.split("_")[1] for i, _ in val}
    assert len(speakers) > 1  # the leakage a grouped split exists to avoid


def test_group_by_errors_name_the_option_and_item() -> None:
    with pytest.raises(DataError, match=r"--group-by .*does not match item 'a/x\.wav'"):
        split_items([("a/x.wav", 0), ("b/y_s_1.wav", 1)], seed=0, group_by="_([a-z]+)_")
    with pytest.raises(DataError, match="not a valid regular expression"):
        split_items([("a", 0)], seed=0, group_by="(")
    with pytest.raises(DataError, match="at least 2"):
        split_items([("a_s_1", 0), ("b_s_2", 1)], seed=0, group_by="_([a-z]+)_")


def test_reject_dir_adds_an_other_class_split_on_both_sides(tmp_path: Path) -> None:
    reject = tmp_path / "elsewhere"
    for sub in ("x", "y"):
        (reject / sub).mkdir(parents=True)
        for i in range(5):
            (reject / sub / f"{sub}_{i}.wav").write_bytes(b"RIFF")
    (reject / ".hidden.wav").write_bytes(b"RIFF")
    (reject / "notes.txt").write_text("not audio")
    data = TaskData("audio-classification", tmp_path / "root", ["a", "b"],
                    [("a/1.wav", 0)], [("b/2.wav", 1)], "stratified")
    add_reject_class(data, reject, suffixes=frozenset({".wav"}), seed=0)
    assert data.labels == ["a", "b", "other"] and data.reject_label == "other"
    rejected = [i for i, y in data.train + data.val if y == 2]
    assert len(rejected) == 10  # hidden and non-.wav files ignored
    assert any(y == 2 for _, y in data.val) and any(y == 2 for _, y in data.train)
    # Item ids are absolute, so data.path() finds the file outside the data root.
    assert all(data.path(i).is_file() for i in rejected)
    assert "out-of-domain" in data.split_note
    with pytest.raises(DataError, match="already has a class named 'other'"):
        add_reject_class(data, reject, suffixes=frozenset({".wav"}), seed=0)
    with pytest.raises(DataError, match="not a folder"):
        add_reject_class(data, tmp_path / "missing", suffixes=frozenset({".wav"}), seed=0)


def test_detect_task(tmp_path: Path, hymenoptera: Path) -> None:
    assert detect_task(hymenoptera).name == "image-classification"
    if DIGITS.is_dir():
        assert detect_task(DIGITS).name == "audio-classification"
    tsv = tmp_path / "t.tsv"
    tsv.write_text("label\ttext\nham\thi\n")
    assert detect_task(tsv).name == "text-classification"
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"x\.json: found no data of a known task.*\.tsv or "
                                        r"\.csv file"):
        detect_task(tmp_path / "x.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"found no data.*class folders of images"):
        detect_task(tmp_path / "empty")
    with pytest.raises(DataError, match="no such data folder"):
        detect_task(tmp_path / "missing")


def test_options_a_task_does_not_honour_are_refused(tmp_path: Path, hymenoptera: Path) -> None:
    with pytest.raises(DataError, match="--label-column do not apply to image-classification"):
        load_task_data(hymenoptera, LoadOptions(label_column="label"))
    tsv = tmp_path / "t.tsv"
    tsv.write_text("label\ttext\n" + "".join(f"{'ab'[i % 2]}\ttext {i}\n" for i in range(20)))
    with pytest.raises(DataError, match="--reject-dir do not apply to text-classification"):
        load_task_data(tsv, LoadOptions(reject_dir=str(tmp_path)))


def test_image_data_grouped_and_with_reject(tmp_path: Path, hymenoptera: Path) -> None:
    # Hymenoptera names end in a hex hash; group by its last digit (a stand-in "source").
    root = tmp_path / "imgs"
    for label in ("ants", "bees"):
        (root / label).mkdir(parents=True)
        for f in sorted((hymenoptera / "train" / label).glob("*.jpg"))[:12]:
            (root / label / f.name).symlink_to(f)
    reject = tmp_path / "reject"
    reject.mkdir()
    for f in sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:6]:
        (reject / f.name).symlink_to(f)
    data = load_task_data(root, LoadOptions(seed=0, group_by=r"(\w)\.jpg$",
                                            reject_dir=str(reject)))
    assert data.task == "image-classification" and data.labels == ["ants", "bees", "other"]
    known = [(i, y) for i, y in data.train + data.val if y < 2]
    train_groups = {data.groups[i] for i, y in data.train if y < 2}
    val_groups = {data.groups[i] for i, y in data.val if y < 2}
    assert len(known) == 24 and not train_groups & val_groups
    assert "grouped" in data.split_note and "out-of-domain" in data.split_note
    assert sum(y == 2 for _, y in data.train + data.val) == 6
    assert np.all([data.path(i).is_file() for i, _ in data.train + data.val])
