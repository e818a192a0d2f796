"""A class that has nothing to learn from stops the load with an error that says what each class
folder held: it is never trained, so a "100 % accuracy" model of the classes left is never
published."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console
from test_check import jpeg, make_flat

from modelmint._data import check_dataset, discover
from modelmint._data.audio import load_audio_data
from modelmint._data.images import load_image_data
from modelmint._search.options import TrainOptions
from modelmint._search.run import train
from modelmint.errors import DataError

VOC_XML = "<annotation><object><name>dog</name><bndbox/></object></annotation>"


def detection_folder(root: Path, n: int = 6) -> Path:
    """A detection data set as it is often downloaded: images/ beside annotations/."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        (root / "images" / f"{i:04d}.jpg").write_bytes(jpeg(i))
        (root / "annotations" / f"{i:04d}.xml").write_text(VOC_XML)
    return root


def test_images_beside_annotations_stop_with_what_each_folder_held(tmp_path: Path) -> None:
    root = detection_folder(tmp_path / "voc")
    with pytest.raises(DataError) as caught:
        load_image_data(root)
    assert caught.value.message == (
        f"{root}: cannot train: annotations/: 6 .xml files, no images (the annotations of a "
        "detection data set? Image classification expects root/<class>/<images>). Found: "
        "annotations/: 0 usable image(s) of 6 file(s) (6 .xml files unreadable); images/: 6 "
        "usable image(s) of 6 file(s). Every class folder needs usable images; remove or fix "
        "the ones named")
    report = check_dataset(discover(root))  # `mint check` and the app show it before training
    assert report.blocking == ["annotations/: 6 .xml files, no images (the annotations of a "
                               "detection data set? Image classification expects "
                               "root/<class>/<images>)"]
    assert report.warnings[0] == f"cannot train: {report.blocking[0]}"
    assert report.to_json()["blocking"] == report.blocking


def test_such_a_folder_is_never_trained_nor_published(tmp_path: Path) -> None:
    root = detection_folder(tmp_path / "voc")
    repo, runs = tmp_path / "models", tmp_path / "runs"
    # Annotated images are object detection's data: read as VOC, whose 6 annotation files hold
    # no usable box, so nothing can be trained.
    with pytest.raises(DataError, match=r"VOC layout, 0 with boxes"):
        train(TrainOptions(data=str(root), name="voc", repo=str(repo), runs_dir=str(runs),
                           budget=30, epochs=1), Console(quiet=True))
    assert not (repo / "voc").exists()


def test_a_class_of_unreadable_files_is_named(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "d", per_class=5)
    (root / "bird").mkdir()
    for i in range(3):
        (root / "bird" / f"{i}.jpg").write_bytes(jpeg(i)[:60])  # truncated downloads
    with pytest.raises(DataError) as caught:
        load_image_data(root)
    message = caught.value.message
    assert "cannot train: bird/: 3 .jpg files, none readable (e.g. bird/0.jpg: not a readable" \
        in message
    assert ("Found: bird/: 0 usable image(s) of 3 file(s) (3 .jpg files unreadable); cat/: 5 "
            "usable image(s) of 5 file(s); dog/: 5 usable image(s) of 5 file(s).") in message


def test_an_empty_class_folder_is_named_not_dropped(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "d", per_class=5)
    (root / "bird").mkdir()
    with pytest.raises(DataError, match=r"cannot train: bird/ is empty\. Found: bird/: empty; "):
        load_image_data(root)
    make_flat(tmp_path / "one", per_class=5, classes=("cat",))
    (tmp_path / "one" / "dog").mkdir()
    with pytest.raises(DataError, match=r"found 1 class folder\(s\) with files \(cat/\) and 1 "
                                        r"empty \(dog/\)"):
        discover(tmp_path / "one")


def test_a_val_folder_without_images_only_warns(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_flat(root / "train", per_class=5)
    make_flat(root / "val", per_class=2, seed=500)
    for file in (root / "val" / "dog").iterdir():
        file.write_bytes(b"broken")
    report = check_dataset(discover(root))
    assert report.blocking == []
    assert "class 'dog' has no validation images; its accuracy cannot be measured" in \
        report.warnings


def test_a_grouped_split_that_leaves_a_class_untrained_is_refused(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "d", per_class=4, classes=("cat", "dog", "owl"))
    for i, file in enumerate(sorted((root / "cat").iterdir())):
        file.rename(file.with_name(f"a{i}_{file.name}"))  # cat: one group of its own, 'a'
    for label, group in (("dog", "b"), ("owl", "c")):
        for i, file in enumerate(sorted((root / label).iterdir())):
            file.rename(file.with_name(f"{group if i % 2 else 'a'}{i}_{file.name}"))
    with pytest.raises(DataError, match=r"every item of class\(es\) \['cat'\] is in a held-out "
                                        r"group \(a\)"):
        load_image_data(root, group_by="^([a-c])", seed=0)


def wav(seed: int) -> bytes:
    tone = np.sin(np.linspace(0, 200 + seed * 40, 8000)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, tone, 8000, format="WAV")
    return buf.getvalue()


def test_a_sound_class_folder_without_sound_files_is_named(tmp_path: Path) -> None:
    root = tmp_path / "sounds"
    for ci, label in enumerate(("yes", "no")):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.wav").write_bytes(wav(ci * 10 + i))
    (root / "labels").mkdir()
    for i in range(4):
        (root / "labels" / f"{i}.xml").write_text(VOC_XML)
    (root / "maybe").mkdir()
    (root / "maybe" / "0.wav").write_bytes(b"RIFF not really")
    with pytest.raises(DataError) as caught:
        load_audio_data(root)
    assert caught.value.message == (
        f"{root}: class folder(s) labels/, maybe/ have fewer than 2 usable sound files; each "
        "class needs 2 or more, one for training and one for validation. Found: labels/: 0 "
        "usable sound file(s) (4 .xml files skipped); maybe/: 0 usable sound file(s) (1 "
        "undecodable sound files skipped); no/: 3 usable sound file(s); yes/: 3 usable sound "
        "file(s)")
    (root / "labels" / "0.xml").unlink()
    for folder in ("labels", "maybe"):
        for file in (root / folder).iterdir():
            file.unlink()
    with pytest.raises(DataError, match=r"class folder\(s\) labels/, maybe/ have fewer than 2"):
        load_audio_data(root)
    (root / "labels").rmdir()
    (root / "maybe").rmdir()
    # Longer than the decoder accepts: skipped at load time, not a failure mid-training.
    sf.write(root / "yes" / "long.wav", np.zeros(61 * 8000, np.int16), 8000, subtype="PCM_16")
    data = load_audio_data(root)
    assert data.labels == ["no", "yes"] and data.extra["class_counts"] == {"no": 3, "yes": 3}
    assert data.warnings == ["yes/long.wav: skipped, 61.0 s of sound exceeds the limit of 60 s"]
