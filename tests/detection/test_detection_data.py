"""The detection data check and split: real VOC (raccoon), generated shapes in every format, and
messy folders whose every problem must be reported, repaired or refused."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from modelmint._data.annotations import read_annotations, write_annotations
from modelmint._data.detection_data import detection_evidence, load_detection_data
from modelmint._data.images import IMAGE_SUFFIXES
from modelmint.errors import DataError

from .shapes import make_shapes, voc_xml

RACCOON = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "raccoon"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), images=30, seed=1,
                       size_range=(80, 150), max_side=40)


def _digest(root: Path, rel: str) -> str:
    return hashlib.sha256((root / rel).read_bytes()).hexdigest()


def test_raccoon_loads_with_one_class_and_no_leakage() -> None:
    data = load_detection_data(RACCOON, seed=0)
    report = data.extra["detection_report"]
    assert data.task == "object-detection" and data.labels == ["raccoon"]
    assert report["format"] == "voc" and report["per_class_boxes"]["raccoon"] == report["boxes"]
    assert 205 <= report["boxes"] <= 217  # 217 annotated; exact duplicates are kept once
    assert len(data.train) + len(data.val) == report["images"] > 190
    assert 0.15 <= len(data.val) / report["images"] <= 0.25
    assert len(report["duplicates"]) > 0
    assert any(w.startswith("duplicate images (one copy kept)") for w in data.warnings)
    train = {_digest(data.root, rel) for rel, _ in data.train}
    assert not train & {_digest(data.root, rel) for rel, _ in data.val}
    assert data.extra["seed"] == 0
    json.dumps(report)  # the run saves it
    rel, target = data.train[0]
    with Image.open(data.root / rel) as img:
        assert (target["width"], target["height"]) == img.size
    for x1, y1, x2, y2 in target["boxes"]:
        assert 0 <= x1 < x2 <= target["width"] and 0 <= y1 < y2 <= target["height"]


def test_shapes_split_is_seeded_and_holds_boxes_on_both_sides(shapes: Path) -> None:
    data = load_detection_data(shapes, seed=4)
    assert data.labels == ["circle", "square", "triangle"]
    assert data.warnings == []
    assert len(data.val) == 6 and len(data.train) == 24
    assert all(target["boxes"] for _, target in data.val + data.train)
    for _, target in data.train + data.val:
        assert len(target["boxes"]) == len(target["labels"])
        assert all(0 <= y < 3 for y in target["labels"])
    assert {y for _, t in data.train for y in t["labels"]} == {0, 1, 2}
    assert "stratified" in data.split_note and "seed 4" in data.split_note
    again = load_detection_data(shapes, seed=4)
    assert [i for i, _ in again.val] == [i for i, _ in data.val]
    assert [i for i, _ in load_detection_data(shapes, seed=5).val] != [i for i, _ in data.val]


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_every_format_gives_the_same_items(shapes: Path, tmp_path: Path, fmt: str) -> None:
    voc = load_detection_data(shapes, seed=2)
    other = load_detection_data(write_annotations(read_annotations(shapes), tmp_path, fmt),
                                seed=2)
    assert other.labels == voc.labels
    assert [i for i, _ in other.val] == [i for i, _ in voc.val]
    for (_, a), (_, b) in zip(voc.train + voc.val, other.train + other.val, strict=True):
        assert a["labels"] == b["labels"]
        for p, q in zip(a["boxes"], b["boxes"], strict=True):
            assert max(abs(u - v) for u, v in zip(p, q, strict=True)) < 1e-3


def test_group_by_keeps_each_group_on_one_side(shapes: Path) -> None:
    data = load_detection_data(shapes, seed=0, group_by=r"shapes-00(\d)")
    train_groups = {data.groups[i] for i, _ in data.train}
    val_groups = {data.groups[i] for i, _ in data.val}
    assert train_groups and val_groups and not train_groups & val_groups
    assert "grouped" in data.split_note
    with pytest.raises(DataError, match="does not match item"):
        load_detection_data(shapes, group_by=r"zebra-(\d)")


@pytest.fixture()
def messy(shapes: Path, tmp_path: Path) -> Path:
    """The shapes with one of each problem the check must catch."""
    root = tmp_path / "messy"
    shutil.copytree(shapes, root)
    ann, img = root / "annotations", root / "images"
    (root / "classes.txt").write_text("circle\nsquare\ntriangle\n")

    def rewrite(i: int, objects: list[tuple[str, tuple[float, float, float, float]]]) -> None:
        name = f"shapes-{i:04d}"
        with Image.open(img / f"{name}.jpg") as picture:
            width, height = picture.size
        (ann / f"{name}.xml").write_text(voc_xml(f"{name}.jpg", width, height, objects))

    rewrite(0, [("circle", (-10, 5, 30, 30)), ("square", (10, 10, 40, 40))])  # clipped
    rewrite(1, [("circle", (40, 40, 20, 60)), ("square", (5, 5, 25, 25))])  # inverted
    rewrite(2, [("hexagon", (5, 5, 25, 25)), ("circle", (30, 30, 50, 50))])  # unknown label
    rewrite(3, [("square", (500, 500, 600, 600)), ("circle", (1, 1, 20, 20))])  # outside
    (ann / "shapes-0004.xml").write_text("<annotation>\n  <object>\n</annotation>\n")
    (img / "shapes-0005.jpg").unlink()  # annotation without an image
    (ann / "shapes-0006.xml").unlink()  # image without an annotation: a negative
    (img / "shapes-0007.jpg").write_bytes(b"not a jpeg at all")  # undecodable
    shutil.copy(img / "shapes-0008.jpg", img / "shapes-0099.jpg")  # duplicate bytes
    shutil.copy(ann / "shapes-0008.xml", ann / "shapes-0099.xml")
    return root


def test_messy_folder_is_repaired_and_reported(messy: Path) -> None:
    data = load_detection_data(messy, seed=0)
    report = data.extra["detection_report"]
    items = dict(data.train + data.val)
    assert items["images/shapes-0000.jpg"]["boxes"][0] == [0.0, 5.0, 30.0, 30.0]
    assert report["clipped"] == 1
    assert report["dropped"] == {"inverted_or_empty": 1, "outside_image": 1,
                                 "label_not_in_classes": 1}
    assert [len(items[f"images/shapes-000{i}.jpg"]["boxes"]) for i in (1, 2, 3)] == [1, 1, 1]
    assert items["images/shapes-0006.jpg"] == {**items["images/shapes-0006.jpg"],
                                               "boxes": [], "labels": []}
    assert report["negatives"] == 1 and report["negatives_without_annotation_file"] == 1
    assert "images/shapes-0007.jpg" in report["skipped_files"]
    assert "annotations/shapes-0005.xml" in report["skipped_files"]
    assert "annotations/shapes-0004.xml" in report["skipped_files"]
    assert not {"images/shapes-0004.jpg", "images/shapes-0005.jpg",
                "images/shapes-0007.jpg"} & set(items)
    assert report["duplicates"] == [["images/shapes-0008.jpg", "images/shapes-0099.jpg"]]
    assert "images/shapes-0099.jpg" not in items
    warnings = "\n".join(data.warnings)
    for expected in ("boxes reaching outside the image (clipped): 1 (images/shapes-0000.jpg)",
                     "inverted or empty boxes (dropped): 1 (images/shapes-0001.jpg)",
                     "label not in the class list (dropped): 1 (images/shapes-0002.jpg)",
                     "boxes wholly outside the image (dropped): 1 (images/shapes-0003.jpg)",
                     "annotation problems (skipped): 1 (annotations/shapes-0004.xml)",
                     "line 3, column 2: malformed XML",
                     "annotations without an image (skipped): 1 (annotations/shapes-0005.xml)",
                     "images without an annotation file (kept as negatives): 1",
                     "unreadable images (skipped): 1 (images/shapes-0007.jpg)",
                     "duplicate images (one copy kept): 1 (images/shapes-0099.jpg)"):
        assert expected in warnings
    # --strict, as for classification: every flagged image is skipped, the rest kept.
    strict = load_detection_data(messy, strict=True)
    strict_items = {f for f, _ in strict.train + strict.val}
    flagged = {f"images/shapes-000{i}.jpg" for i in (0, 1, 2, 3, 6)}
    assert not flagged & strict_items
    assert strict_items == set(items) - flagged
    assert "--strict: flagged images (skipped): 5" in "\n".join(strict.warnings)
    assert set(strict.extra["detection_report"]["skipped_files"]) >= flagged


def test_upright_size_comes_from_the_decoded_image(tmp_path: Path) -> None:
    root = tmp_path / "turned"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60x40, displayed turned a quarter: 40x60
    for i in range(3):
        Image.new("RGB", (60, 40), (i * 40, 90, 90)).save(root / "images" / f"t{i}.jpg",
                                                         exif=exif)
        (root / "annotations" / f"t{i}.xml").write_text(
            voc_xml(f"t{i}.jpg", 40, 60, [("cat", (5, 10, 30, 50))]))
    data = load_detection_data(root)
    assert data.warnings == []
    target = dict(data.train + data.val)["images/t0.jpg"]
    assert (target["width"], target["height"]) == (40, 60)
    assert target["boxes"] == [[5.0, 10.0, 30.0, 50.0]]


def test_untrainable_sets_say_what_was_found(shapes: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra-class"
    shutil.copytree(shapes, extra)
    (extra / "classes.txt").write_text("circle\nsquare\ntriangle\nstar\n")
    with pytest.raises(DataError, match=re.escape("class(es) 'star' have no usable box")):
        load_detection_data(extra)
    single = tmp_path / "single"
    (single / "images").mkdir(parents=True)
    (single / "annotations").mkdir()
    for i in range(3):
        shutil.copy(shapes / "images" / f"shapes-{i:04d}.jpg", single / "images")
    shutil.copy(shapes / "annotations" / "shapes-0000.xml", single / "annotations")
    with pytest.raises(DataError, match=re.escape("3 usable image(s) in VOC layout, 1 with boxes")):
        load_detection_data(single)
    with pytest.raises(DataError, match="no object-detection annotations found"):
        load_detection_data(tmp_path / "single" / "images")


def test_imbalance_is_warned(tmp_path: Path) -> None:
    root = tmp_path / "imbalanced"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(6):
        Image.new("RGB", (100, 100), (i * 30, 0, 0)).save(root / "images" / f"i{i}.png")
        objects = [("dog", (float(j * 10), 0.0, float(j * 10 + 8), 8.0)) for j in range(4)]
        if i == 0:
            objects.append(("cat", (50.0, 50.0, 70.0, 70.0)))
        (root / "annotations" / f"i{i}.xml").write_text(voc_xml(f"i{i}.png", 100, 100, objects))
    data = load_detection_data(root)
    assert any("classes are imbalanced: 'dog' has 24 boxes, 'cat' 1" in w for w in data.warnings)
    assert data.extra["detection_report"]["per_class_boxes"] == {"cat": 1, "dog": 24}


def test_evidence_beats_image_classification(shapes: Path, tmp_path: Path) -> None:
    images = sum(1 for f in shapes.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    assert detection_evidence(shapes) > images > 0
    folders = tmp_path / "classes"
    for name in ("cat", "dog"):
        shutil.copytree(shapes / "images", folders / name)
    assert detection_evidence(folders) == 0
