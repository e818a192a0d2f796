"""Reading, detecting and writing VOC, COCO and YOLO: exact round trips between every pair of
formats, and a named finding (file and line or field) for every bad annotation."""

from __future__ import annotations

import json
import shutil
from itertools import permutations
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint._data.annotations import (
    AnnotatedImage,
    AnnotatedSet,
    Box,
    detect_format,
    read_annotations,
    voc_xml,
    write_annotations,
)
from modelmint._data.annotations.coco import box_from_coco, coco_bbox
from modelmint._data.annotations.voc import parse_voc_xml
from modelmint._data.annotations.yolo import parse_yolo_line, yolo_line
from modelmint.errors import DataError

from .shapes import make_shapes

RACCOON = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "raccoon"
FORMATS = ("voc", "coco", "yolo")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), images=10, seed=3,
                       size_range=(80, 150), max_side=40)


def assert_same_set(a: AnnotatedSet, b: AnnotatedSet, tolerance: float = 1e-3) -> None:
    assert a.classes == b.classes
    assert [Path(i.file).name for i in a.images] == [Path(i.file).name for i in b.images]
    for x, y in zip(a.images, b.images, strict=True):
        assert (x.width, x.height) == (y.width, y.height)
        assert [b.label for b in x.boxes] == [b.label for b in y.boxes]
        for p, q in zip(x.boxes, y.boxes, strict=True):
            assert max(abs(p.x1 - q.x1), abs(p.y1 - q.y1), abs(p.x2 - q.x2),
                       abs(p.y2 - q.y2)) <= tolerance, (x.file, p, q)


def test_raccoon_reads_as_voc_with_one_class() -> None:
    aset = read_annotations(RACCOON)
    assert (aset.format, aset.classes, len(aset.images)) == ("voc", ["raccoon"], 200)
    assert sum(len(i.boxes) for i in aset.images) == 217
    assert aset.findings == []
    first = next(i for i in aset.images if i.file == "images/raccoon-1.jpg")
    assert (first.width, first.height) == (650, 417)
    assert first.boxes == [Box("raccoon", 81, 88, 522, 408)]  # as written: no 1-px offset


def test_voc_coco_yolo_voc_is_exact(shapes: Path, tmp_path: Path) -> None:
    original = read_annotations(shapes)
    assert original.format == "voc" and original.classes == ["circle", "square", "triangle"]
    current = original
    for fmt in ("coco", "yolo", "voc"):
        current = read_annotations(write_annotations(current, tmp_path / fmt, fmt))
        assert current.format == fmt and current.findings == []
    assert_same_set(original, current)


@pytest.mark.parametrize(("src", "dst"), list(permutations(FORMATS, 2)))
def test_every_pair_converts_exactly(shapes: Path, tmp_path: Path, src: str, dst: str) -> None:
    original = read_annotations(shapes)
    source = read_annotations(write_annotations(original, tmp_path / "src", src))
    converted = read_annotations(write_annotations(source, tmp_path / "dst", dst))
    assert converted.format == dst
    assert_same_set(original, converted)
    image = converted.root / converted.images[0].file
    assert image.read_bytes() == (shapes / original.images[0].file).read_bytes()


@st.composite
def images(draw: st.DrawFn) -> AnnotatedImage:
    width = draw(st.integers(1, 20_000))
    height = draw(st.integers(1, 20_000))
    boxes = []
    for _ in range(draw(st.integers(0, 4))):
        x1 = draw(st.floats(0, width - 0.01, allow_nan=False))
        y1 = draw(st.floats(0, height - 0.01, allow_nan=False))
        x2 = draw(st.floats(x1 + 0.01, width, allow_nan=False))
        y2 = draw(st.floats(y1 + 0.01, height, allow_nan=False))
        boxes.append(Box(draw(st.sampled_from(["a", "b"])), x1, y1, x2, y2))
    return AnnotatedImage("images/x.jpg", width, height, boxes)


def _through(fmt: str, image: AnnotatedImage) -> AnnotatedImage:
    """The image written and read back in ``fmt``, with the writers' own number formatting."""
    if fmt == "voc":
        _, width, height, boxes = parse_voc_xml(voc_xml(image), "x.xml")
        return AnnotatedImage(image.file, width, height, boxes)
    if fmt == "coco":
        bboxes = json.loads(json.dumps([coco_bbox(b) for b in image.boxes]))
        boxes = [box_from_coco(b.label, bbox) for b, bbox in zip(image.boxes, bboxes,
                                                                  strict=True)]
        return AnnotatedImage(image.file, image.width, image.height, boxes)
    classes = ["a", "b"]
    lines = [yolo_line(b, classes.index(b.label), image.width, image.height)
             for b in image.boxes]
    parsed = [parse_yolo_line(line, classes, image.width, image.height) for line in lines]
    return AnnotatedImage(image.file, image.width, image.height,
                          [b for b in parsed if b is not None])


@settings(max_examples=200, deadline=None)
@given(images(), st.permutations(FORMATS), st.permutations(FORMATS))
def test_any_chain_of_formats_stays_within_half_a_pixel(
        image: AnnotatedImage, first: list[str], second: list[str]) -> None:
    current = image
    for fmt in [*first, *second]:
        current = _through(fmt, current)
    assert (current.width, current.height) == (image.width, image.height)
    assert [b.label for b in current.boxes] == [b.label for b in image.boxes]
    for p, q in zip(image.boxes, current.boxes, strict=True):
        assert max(abs(p.x1 - q.x1), abs(p.y1 - q.y1), abs(p.x2 - q.x2),
                   abs(p.y2 - q.y2)) <= 0.5


def test_detects_each_layout(shapes: Path, tmp_path: Path) -> None:
    aset = read_annotations(shapes)
    assert detect_format(shapes) == "voc"
    for fmt in FORMATS:
        assert detect_format(write_annotations(aset, tmp_path / fmt, fmt)) == fmt
    devkit = tmp_path / "devkit"  # VOC's own folder names, one level down
    shutil.copytree(shapes / "images", devkit / "VOC2012" / "JPEGImages")
    shutil.copytree(shapes / "annotations", devkit / "VOC2012" / "Annotations")
    read = read_annotations(devkit)
    assert read.format == "voc" and read.root == devkit / "VOC2012"
    assert read.images[0].file.startswith("JPEGImages/")
    coco_root = tmp_path / "coco-flat"  # images beside a root instances.json
    shutil.copytree(shapes / "images", coco_root)
    shutil.copy(tmp_path / "coco" / "annotations" / "instances_default.json",
                coco_root / "instances_val.json")
    assert_same_set(aset, read_annotations(coco_root))
    assert detect_format(tmp_path / "nothing-here") is None
    with pytest.raises(DataError, match="expected VOC: images/"):
        read_annotations(shapes / "images")


def test_yolo_names_as_list_or_classes_txt_and_sub_splits(shapes: Path, tmp_path: Path) -> None:
    aset = read_annotations(shapes)
    yolo = write_annotations(aset, tmp_path / "yolo", "yolo")
    meta = yaml.safe_load((yolo / "data.yaml").read_text())
    assert meta["names"] == {0: "circle", 1: "square", 2: "triangle"}
    (yolo / "data.yaml").write_text(yaml.safe_dump({"names": aset.classes}))
    assert_same_set(aset, read_annotations(yolo))
    (yolo / "data.yaml").unlink()
    (yolo / "classes.txt").write_text("\n".join(aset.classes) + "\n")
    assert_same_set(aset, read_annotations(yolo))
    for folder in ("images", "labels"):  # Ultralytics' images/train + labels/train
        (yolo / folder / "train").mkdir()
        for file in list((yolo / folder).glob("*.*")):
            file.rename(yolo / folder / "train" / file.name)
    split = read_annotations(yolo)
    assert split.images[0].file.startswith("images/train/")
    assert_same_set(aset, split)
    voc = read_annotations(write_annotations(split, tmp_path / "voc", "voc"))
    assert voc.images[0].file.startswith("images/train/")
    assert_same_set(aset, voc)


def test_bad_voc_files_are_named_with_their_line_and_skipped(shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "voc"
    shutil.copytree(shapes, root)
    (root / "annotations" / "shapes-0001.xml").write_text(
        "<annotation>\n<filename>shapes-0001.jpg</filename>\n<object><name>x</name>\n")
    (root / "annotations" / "shapes-0002.xml").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY e "boom">]>\n<annotation>&e;</annotation>')
    bad_field = (root / "annotations" / "shapes-0003.xml")
    bad_field.write_text(bad_field.read_text().replace("<xmin>", "<xmin>left", 1))
    (root / "images" / "shapes-0004.jpg").unlink()
    (root / "annotations" / "shapes-0005.xml").unlink()
    aset = read_annotations(root)
    text = "\n".join(aset.findings)
    assert "annotations/shapes-0001.xml: line 4, column 0: malformed XML" in text
    assert "annotations/shapes-0002.xml: refused XML construct" in text
    assert "annotations/shapes-0003.xml: object 1 <bndbox/xmin> is 'left" in text
    assert "annotations/shapes-0004.xml: annotation without an image" in text
    assert "images/shapes-0005.jpg: image without an annotation file; kept as a negative" in text
    files = {i.file: i for i in aset.images}
    assert len(files) == 6 and files["images/shapes-0005.jpg"].boxes == []
    # Left out, not taken for negatives: their annotations could not be read.
    assert not {"images/shapes-0001.jpg", "images/shapes-0002.jpg",
                "images/shapes-0003.jpg"} & set(files)


def test_bad_coco_fields_are_named_and_skipped(shapes: Path, tmp_path: Path) -> None:
    coco = write_annotations(read_annotations(shapes), tmp_path / "coco", "coco")
    path = coco / "annotations" / "instances_default.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    data["annotations"][1]["bbox"] = [1, 2, "wide"]
    data["images"][2]["width"] = -5
    path.write_text(json.dumps(data))
    aset = read_annotations(coco)
    text = "\n".join(aset.findings)
    assert ("annotations/instances_default.json: annotations[0].category_id: 99 is not a "
            "category id (known: 1, 2, 3)") in text
    assert "annotations[1].bbox: [1, 2, 'wide']; expected [x, y, width, height]" in text
    assert "images[2]: width/height are -5/" in text
    assert len(aset.images) == 9
    path.write_text('{"images": [\n  {"id": 1,, }\n]}')
    broken = read_annotations(coco)
    assert broken.images == []
    assert broken.findings[0].startswith(
        "annotations/instances_default.json: line 2, column 12: malformed JSON")


def test_bad_yolo_lines_are_named_with_their_line_number(shapes: Path, tmp_path: Path) -> None:
    yolo = write_annotations(read_annotations(shapes), tmp_path / "yolo", "yolo")
    label = yolo / "labels" / "shapes-0000.txt"
    lines = label.read_text().splitlines()
    label.write_text("\n".join([lines[0], "1 0.5 0.5 0.2", "7 0.5 0.5 0.1 0.1",
                                "x 0.5 0.5 0.1 0.1"]) + "\n")
    (yolo / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    aset = read_annotations(yolo)
    text = "\n".join(aset.findings)
    assert "labels/shapes-0000.txt: line 2: 4 value(s); expected 5: class x_centre" in text
    assert "labels/shapes-0000.txt: line 3: class 7 is not in the class list (0..2)" in text
    assert "labels/shapes-0000.txt: line 4: class 'x' is not a whole number" in text
    assert "labels/orphan.txt: annotation without an image" in text
    assert len(next(i for i in aset.images if i.file.endswith("0000.jpg")).boxes) == 1
    (yolo / "data.yaml").write_text("names: [a, b\n")
    assert read_annotations(yolo).findings[0].startswith("data.yaml: line 2: malformed YAML")


def test_boxes_outside_or_inverted_are_findings(tmp_path: Path) -> None:
    image = AnnotatedImage("images/a.jpg", 100, 50,
                           [Box("a", -3, 0, 40, 40), Box("a", 30, 10, 20, 20)])
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    from PIL import Image

    Image.new("RGB", (100, 50)).save(root / "images" / "a.jpg")
    (root / "annotations" / "a.xml").write_text(voc_xml(image))
    findings = read_annotations(root).findings
    assert findings == [
        "images/a.jpg: box 1 (a) (-3, 0, 40, 40) reaches outside the 100x50 image",
        "images/a.jpg: box 2 (a) (30, 10, 20, 20) is inverted or empty; expected x1 < x2 and "
        "y1 < y2"]


def test_writing_refuses_a_used_folder_and_an_unknown_format(shapes: Path,
                                                             tmp_path: Path) -> None:
    aset = read_annotations(shapes)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        write_annotations(aset, tmp_path / "full", "coco")
    with pytest.raises(DataError, match="expected one of voc, coco, yolo"):
        write_annotations(aset, tmp_path / "new", "pascal")
    with pytest.raises(DataError, match="inside the source folder"):
        write_annotations(aset, shapes / "converted", "yolo")
    with pytest.raises(DataError, match="not a YOLO layout"):
        read_annotations(shapes, "yolo")


def test_written_coco_loads_in_the_reference_implementation(shapes: Path,
                                                            tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    aset = read_annotations(shapes)
    coco = write_annotations(aset, tmp_path / "coco", "coco")
    api = COCO(str(coco / "annotations" / "instances_default.json"))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == aset.classes
    for image_id, image in zip(sorted(api.getImgIds()), aset.images, strict=True):
        record = api.loadImgs(image_id)[0]
        assert (record["file_name"], record["width"]) == (Path(image.file).name, image.width)
        anns = api.loadAnns(api.getAnnIds(imgIds=image_id))
        assert [a["bbox"] for a in anns] == [[b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1]
                                             for b in image.boxes]
