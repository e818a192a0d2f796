"""``mint convert`` through the real command line: a summary line, the findings, and a clear
error (exit 2) for a folder that holds no annotations."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelmint._data.annotations import read_annotations
from modelmint.cli import app

from .shapes import make_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), images=6, seed=2,
                       size_range=(80, 120), max_side=30)


def test_convert_writes_the_target_format_and_says_so(shapes: Path, tmp_path: Path) -> None:
    source = read_annotations(shapes)
    boxes = sum(len(i.boxes) for i in source.images)
    result = CliRunner().invoke(app, ["convert", str(shapes), str(tmp_path / "y"), "--to",
                                      "yolo"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (f"converted 6 images ({boxes} boxes, 3 classes) from VOC {shapes} to "
                        f"YOLO {tmp_path / 'y'}; 0 findings")
    yolo = read_annotations(tmp_path / "y")
    assert yolo.format == "yolo" and yolo.classes == source.classes
    assert len(list((tmp_path / "y" / "images").iterdir())) == 6
    back = CliRunner().invoke(app, ["convert", str(tmp_path / "y"), str(tmp_path / "c"),
                                    "--from", "yolo", "--to", "coco"])
    assert back.exit_code == 0, back.output
    assert (tmp_path / "c" / "annotations" / "instances_default.json").is_file()
    assert sum(len(i.boxes) for i in read_annotations(tmp_path / "c").images) == boxes


def test_convert_prints_the_findings(shapes: Path, tmp_path: Path) -> None:
    messy = tmp_path / "messy"
    shutil.copytree(shapes, messy)
    (messy / "annotations" / "shapes-0002.xml").write_text("<annotation>\n<size>\n")
    result = CliRunner().invoke(app, ["convert", str(messy), str(tmp_path / "out"), "--to",
                                      "coco"])
    assert result.exit_code == 0, result.output
    assert "converted 5 images" in result.output and "; 1 finding" in result.output
    assert ("finding: annotations/shapes-0002.xml: line 3, column 0: malformed XML"
            in result.output)


@pytest.mark.parametrize(("args", "message"), [
    (["--to", "yolo"], "no object-detection annotations found; expected VOC"),
    (["--to", "pascal"], "--to 'pascal': unknown annotation format; expected one of"),
    (["--to", "coco", "--from", "yolo"], "not a YOLO layout"),
])
def test_bad_source_or_format_is_a_clear_error(shapes: Path, tmp_path: Path, args: list[str],
                                               message: str) -> None:
    src = shapes / "images" if args == ["--to", "yolo"] else shapes
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_missing_source_folder_exits_2(tmp_path: Path) -> None:
    # A long path: the message must not be cut into lines at the console's width.
    absent = tmp_path / ("deep-" * 12) / "absent"
    result = CliRunner().invoke(app, ["convert", str(absent), str(tmp_path / "o"),
                                      "--to", "voc"])
    assert result.exit_code == 2
    assert f"{absent}: not a folder" in result.output


def test_check_reports_a_detection_folder(shapes: Path) -> None:
    """``mint check`` on annotated images reports boxes per class, not folders as classes."""
    import json

    source = read_annotations(shapes)
    result = CliRunner().invoke(app, ["check", str(shapes), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["format"] == "voc" and report["classes"] == source.classes
    assert sum(report["per_class_boxes"].values()) == sum(len(i.boxes) for i in source.images)
    assert report["train_images"] + report["val_images"] == 6
    table = CliRunner().invoke(app, ["check", str(shapes)])
    assert table.exit_code == 0 and "boxes" in table.output
    assert all(c in table.output for c in source.classes)
