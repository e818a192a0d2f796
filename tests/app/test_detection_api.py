"""Object-detection projects over the REST API on a real app: creation, uploads of VOC, COCO and
YOLO sets (and plain images), boxes read and replaced with good and bad input, the data check,
and the labels exported in each format and read back."""

from __future__ import annotations

import importlib.util
import io
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from modelmint._app import AppSettings
from modelmint._data.annotations import AnnotatedSet, read_annotations, write_annotations


def _shapes_module() -> object:
    """tests/detection/shapes.py (the generated shapes set), loaded by its path: tests/app is
    no package that could import it."""
    name = "detection_shapes_for_app"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "detection" / "shapes.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


shapes_module = _shapes_module()
CLASSES: tuple[str, ...] = shapes_module.CLASSES  # type: ignore[attr-defined]
make_shapes = shapes_module.make_shapes  # type: ignore[attr-defined]
Start = Callable[[AppSettings], AbstractContextManager[str]]
FORMATS = ("voc", "coco", "yolo")
IMAGES = 6


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same generated set in each format (VOC as made, COCO and YOLO converted)."""
    root = tmp_path_factory.mktemp("shapes")
    voc = make_shapes(root / "voc", images=IMAGES, seed=3, size_range=(120, 200))
    out = {"voc": voc}
    aset = read_annotations(voc, "voc")
    for fmt in ("coco", "yolo"):
        out[fmt] = write_annotations(aset, root / fmt, fmt)
    return out


@pytest.fixture
def client(settings: AppSettings, start_app: Start) -> Iterator[httpx.Client]:
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def new_detection_project(client: httpx.Client, name: str = "Shapes") -> int:
    reply = client.post("/api/projects", json={"name": name, "task": "image",
                                               "kind": "detection"})
    assert reply.status_code == 201, reply.text
    assert reply.json()["kind"] == "detection"
    return int(reply.json()["id"])


def upload(client: httpx.Client, project: int, name: str, body: bytes) -> httpx.Response:
    return client.post(f"/api/projects/{project}/uploads", params={"filename": name},
                       content=body)


def boxes_by_stem(aset: AnnotatedSet) -> dict[str, list[tuple[str, float, float, float, float]]]:
    return {Path(im.file).stem: sorted((b.label, b.x1, b.y1, b.x2, b.y2) for b in im.boxes)
            for im in aset.images}


def project_boxes(client: httpx.Client, project: int
                  ) -> dict[str, list[tuple[str, float, float, float, float]]]:
    items = client.get(f"/api/projects/{project}/items", params={"limit": 1000}).json()["items"]
    out = {}
    for item in items:
        got = client.get(f"/api/projects/{project}/images/{item['id']}/boxes").json()
        out[Path(item["original"]).stem] = sorted(
            (b["label"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in got["boxes"])
    return out


def assert_same_boxes(got: dict[str, list[tuple[str, float, float, float, float]]],
                      want: dict[str, list[tuple[str, float, float, float, float]]]) -> None:
    assert got.keys() == want.keys()
    for stem, boxes in want.items():
        assert [b[0] for b in got[stem]] == [b[0] for b in boxes], stem
        for g, w in zip(got[stem], boxes, strict=True):
            assert g[1:] == pytest.approx(w[1:], abs=0.5), stem  # YOLO rounds a little


def test_create_a_detection_project(client: httpx.Client) -> None:
    project = new_detection_project(client)
    shown = client.get(f"/api/projects/{project}").json()
    assert (shown["task"], shown["kind"], shown["items"]) == ("image", "detection", 0)
    plain = client.post("/api/projects", json={"name": "Bees"}).json()
    assert plain["kind"] == "classification"
    sound = client.post("/api/projects", json={"name": "x", "task": "sound",
                                                "kind": "detection"})
    assert sound.status_code == 400 and "task 'sound'" in sound.json()["error"]
    bad = client.post("/api/projects", json={"name": "x", "kind": "segmentation"})
    assert bad.status_code == 400 and "kind" in bad.json()["error"]
    not_boxes = client.get(f"/api/projects/{plain['id']}/classes")
    assert not_boxes.status_code == 400 and "classifies" in not_boxes.json()["error"]
    page = client.get(f"/projects/{project}/label")
    assert page.status_code == 200 and 'id="box-canvas"' in page.text
    assert "/static/boxes.js" in page.text


@pytest.mark.parametrize("fmt", FORMATS)
def test_upload_each_format_keeps_its_boxes(client: httpx.Client, shapes: dict[str, Path],
                                            settings: AppSettings, fmt: str) -> None:
    project = new_detection_project(client)
    reply = upload(client, project, f"shapes-{fmt}.zip", zip_folder(shapes[fmt]))
    assert reply.status_code == 201, reply.text
    result = reply.json()
    assert (result["added"], result["format"]) == (IMAGES, fmt)
    assert client.get(f"/api/projects/{project}/classes").json() == list(CLASSES)
    assert client.get(f"/api/projects/{project}").json()["counts"] == {"labelled": IMAGES}
    want = boxes_by_stem(read_annotations(shapes["voc"], "voc"))
    assert_same_boxes(project_boxes(client, project), want)
    # The project's data folder is a VOC set `mint train` reads as it stands.
    stored = read_annotations(settings.projects_dir / str(project) / "voc", "voc")
    assert stored.format == "voc" and len(stored.images) == IMAGES
    assert stored.findings == []
    check = client.get(f"/api/projects/{project}/check").json()
    total = sum(len(b) for b in want.values())
    assert sum(check["counts"]["boxes"].values()) == total


def test_plain_images_then_boxes_good_and_bad(client: httpx.Client,
                                              shapes: dict[str, Path]) -> None:
    project = new_detection_project(client)
    jpg = sorted((shapes["voc"] / "images").glob("*.jpg"))[0]
    reply = upload(client, project, "one.jpg", jpg.read_bytes())
    assert reply.status_code == 201, reply.text
    item = client.get(f"/api/projects/{project}/items").json()["items"][0]
    url = f"/api/projects/{project}/images/{item['id']}/boxes"
    first = client.get(url).json()
    assert (first["labelled"], first["boxes"], first["classes"]) == (False, [], [])
    width, height = first["width"], first["height"]
    assert client.get(f"/api/projects/{project}").json()["counts"] == {"unlabeled": 1}

    box = {"label": "circle", "x1": 1, "y1": 2, "x2": 30.5, "y2": 40}
    unknown = client.put(url, json={"boxes": [box]})
    assert unknown.status_code == 400 and "boxes.0.label" in unknown.json()["error"]
    assert client.post(f"/api/projects/{project}/classes",
                       json={"name": "circle"}).json() == ["circle"]
    assert client.post(f"/api/projects/{project}/classes",
                       json={"name": "square"}).json() == ["circle", "square"]
    bad_class = client.post(f"/api/projects/{project}/classes", json={"name": "a/b"})
    assert bad_class.status_code == 400 and "class name" in bad_class.json()["error"]
    saved = client.put(url, json={"boxes": [box, {**box, "label": "square", "x1": 5}]})
    assert saved.status_code == 200, saved.text
    again = client.get(url).json()
    assert again["labelled"] is True
    assert [(b["label"], b["x1"], b["x2"]) for b in again["boxes"]] == [
        ("circle", 1, 30.5), ("square", 5, 30.5)]
    assert client.get(f"/api/projects/{project}").json()["counts"] == {"labelled": 1}

    cases = {
        "boxes.0": {**box, "x2": 1},  # x2 not right of x1
        "boxes.1": None,  # filled below: y2 above y1 on the second box
        "boxes.0.x2": {**box, "x2": width + 1},
        "boxes.0.y2": {**box, "y2": height + 0.5},
        "boxes.0.x1": {**box, "x1": -3},
    }
    for field, bad in cases.items():
        body = [box, {**box, "y1": 50, "y2": 10}] if bad is None else [bad]
        reply = client.put(url, json={"boxes": body})
        assert reply.status_code == 400, (field, reply.text)
        assert field in reply.json()["error"], (field, reply.json())
    missing = client.put(url, json={"boxes": [{"label": "circle", "x1": 1}]})
    assert missing.status_code == 400 and "boxes.0.y1" in missing.json()["error"]
    assert client.get(url).json()["boxes"] == again["boxes"]  # nothing bad was stored
    negative = client.put(url, json={"boxes": []})
    assert negative.status_code == 200 and negative.json()["labelled"] is True
    assert client.get(f"/api/projects/{project}/images/999999/boxes").status_code == 404
    relabel = client.patch(f"/api/projects/{project}/items/{item['id']}", json={"label": "x"})
    assert relabel.status_code == 400 and "boxes" in relabel.json()["error"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reads_back_in_each_format(client: httpx.Client, shapes: dict[str, Path],
                                          tmp_path: Path, fmt: str) -> None:
    project = new_detection_project(client)
    assert upload(client, project, "shapes.zip", zip_folder(shapes["voc"])).status_code == 201
    item = client.get(f"/api/projects/{project}/items").json()["items"][0]
    moved = {"label": "triangle", "x1": 3, "y1": 4, "x2": 20, "y2": 24}
    url = f"/api/projects/{project}/images/{item['id']}/boxes"
    assert client.put(url, json={"boxes": [moved]}).status_code == 200
    reply = client.get(f"/api/projects/{project}/export", params={"format": fmt})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.content)) as zf:
        zf.extractall(tmp_path / "export")
    (root,) = (tmp_path / "export").iterdir()
    back = read_annotations(root, fmt)
    assert back.format == fmt and back.findings == []
    assert back.classes[:3] == list(CLASSES)
    want = project_boxes(client, project)
    # Exported images are named by their id in the project; map them back to the upload's.
    items = client.get(f"/api/projects/{project}/items").json()["items"]
    originals = {str(i["id"]): Path(i["original"]).stem for i in items}
    got = {originals[stem]: boxes for stem, boxes in boxes_by_stem(back).items()}
    assert_same_boxes(got, want)
    assert want[Path(item["original"]).stem] == [("triangle", 3, 4, 20, 24)]
    bad = client.get(f"/api/projects/{project}/export", params={"format": "csv"})
    assert bad.status_code == 400 and "format" in bad.json()["error"]


def test_detection_uploads_keep_the_zip_guards(client: httpx.Client, settings: AppSettings,
                                               make_zip: Callable[[dict[str, bytes]], bytes]
                                               ) -> None:
    project = new_detection_project(client)
    evil = make_zip({"images/a.jpg": b"x", "../escape.xml": b"<annotation/>"})
    reply = upload(client, project, "evil.zip", evil)
    assert reply.status_code == 400 and "path traversal" in reply.json()["error"]
    bomb = make_zip({"images/big.jpg": b"\0" * (8 << 20)})
    reply = upload(client, project, "bomb.zip", bomb)
    assert reply.status_code == 400 and "zip bomb" in reply.json()["error"]
    not_image = upload(client, project, "notes.txt", b"hello")
    assert not_image.status_code == 400 and "detection project" in not_image.json()["error"]
    assert client.get(f"/api/projects/{project}").json()["items"] == 0
    images = settings.projects_dir / str(project) / "voc" / "images"
    assert list(images.iterdir()) == []
    assert not (settings.projects_dir.parent / "escape.xml").exists()


def test_upload_reports_findings_and_takes_plain_images(client: httpx.Client,
                                                        shapes: dict[str, Path],
                                                        make_zip: Callable[[dict[str, bytes]],
                                                                           bytes]) -> None:
    project = new_detection_project(client)
    voc = shapes["voc"]
    jpgs = sorted((voc / "images").glob("*.jpg"))
    entries = {f"set/images/{p.name}": p.read_bytes() for p in jpgs[:2]}
    entries["set/annotations/" + jpgs[0].stem + ".xml"] = \
        (voc / "annotations" / f"{jpgs[0].stem}.xml").read_bytes()
    entries["set/annotations/" + jpgs[1].stem + ".xml"] = b"<annotation><object>"  # broken
    reply = upload(client, project, "set.zip", make_zip(entries))
    assert reply.status_code == 201, reply.text
    result = reply.json()
    # The image of a broken annotation stays out (it is no negative), and the user is told.
    assert result["format"] == "voc" and result["added"] == 1
    assert any(jpgs[1].stem in f and "malformed XML" in f for f in result["findings"])

    plain = new_detection_project(client, "Plain")
    loose = make_zip({"pics/a.jpg": jpgs[0].read_bytes(), "pics/b.jpg": jpgs[1].read_bytes(),
                      "pics/c.jpg": b"not a picture", "pics/readme.md": b"hi"})
    reply = upload(client, plain, "pics.zip", loose)
    assert reply.status_code == 201, reply.text
    result = reply.json()
    assert (result["format"], result["added"]) == (None, 2)
    assert sorted(result["skipped"]) == ["c.jpg", "readme.md"]
    assert any("c.jpg: not a readable image" in f for f in result["findings"])
    assert client.get(f"/api/projects/{plain}").json()["counts"] == {"unlabeled": 2}
    listed = client.get(f"/api/projects/{plain}/items", params={"label": "unlabeled"}).json()
    assert listed["total"] == 2
    check = client.get(f"/api/projects/{plain}/check").json()
    assert any("at least one box" in w for w in check["warnings"])
    bad = upload(client, plain, "x.jpg", b"not a picture")
    assert bad.status_code == 400 and "not a readable image" in bad.json()["error"]


def test_projects_made_before_detection_stay_classification(tmp_path: Path,
                                                            database: str | None) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from modelmint._app import db

    settings = AppSettings(data_dir=tmp_path / "mint", database=database)
    settings.make_dirs()
    engine = db.make_engine(settings.database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.execute(text("INSERT INTO projects (name, slug, task, created, data_revision) "
                          "VALUES ('old', 'old', 'sound', 'then', 0)"))
        conn.execute(text("INSERT INTO items (project_id, original, suffix, size, created) "
                          "VALUES (1, 'a.wav', '.wav', 3, 'then')"))
    db.migrate(engine)
    with db.session_factory(engine).begin() as session:
        old = session.get(db.Project, 1)
        item = session.get(db.Item, 1)
        assert old is not None and (old.task, old.kind) == ("sound", "classification")
        assert item is not None and item.boxes is None
    engine.dispose()


def test_detection_pages_use_only_local_assets(client: httpx.Client) -> None:
    import re

    project = new_detection_project(client)
    for path in [*(f"/projects/{project}/{tab}" for tab in
                   ("data", "label", "train", "evaluate", "deploy")), "/static/boxes.js"]:
        reply = client.get(path)
        assert reply.status_code == 200, path
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", reply.text), path
        assert 'style="' not in reply.text, path  # the page policy refuses inline styles
