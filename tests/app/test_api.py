"""The REST API on a real app (uvicorn on 127.0.0.1), against SQLite and PostgreSQL: projects,
uploads and their error paths, labels, the token when exposed, the CSRF guard."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from modelmint._app import AppSettings

Build = Callable[[dict[str, bytes]], bytes]
Start = Callable[[AppSettings], AbstractContextManager[str]]


@pytest.fixture
def client(settings: AppSettings, start_app: Start) -> Iterator[httpx.Client]:
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def new_project(client: httpx.Client, name: str = "Ants and bees", task: str = "image") -> int:
    reply = client.post("/api/projects", json={"name": name, "task": task})
    assert reply.status_code == 201, reply.text
    return int(reply.json()["id"])


def upload(client: httpx.Client, project: int, name: str, body: bytes | Iterator[bytes],
           **params: str) -> httpx.Response:
    return client.post(f"/api/projects/{project}/uploads", params={"filename": name, **params},
                       content=body)


def jpeg(hymenoptera: Path, n: int = 0) -> bytes:
    return sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[n].read_bytes()


def test_projects_crud_and_openapi(client: httpx.Client) -> None:
    first = new_project(client)
    second = new_project(client)
    assert client.get(f"/api/projects/{second}").json()["slug"] == "ants-and-bees-2"
    renamed = client.patch(f"/api/projects/{first}", json={"name": "Insects"})
    assert renamed.json()["name"] == "Insects"
    assert [p["name"] for p in client.get("/api/projects").json()] == ["Insects",
                                                                      "Ants and bees"]
    assert client.delete(f"/api/projects/{first}").status_code == 204
    assert [p["id"] for p in client.get("/api/projects").json()] == [second]
    schema = client.get("/openapi.json").json()
    assert "/api/projects/{project_id}/uploads" in schema["paths"]
    assert "/api/projects/{project_id}/sdk" in schema["paths"]
    bad = client.post("/api/projects", json={"name": "x", "task": "video"})
    assert bad.status_code == 400 and "task" in bad.json()["error"]


def test_zip_layout_labels_and_relabel(client: httpx.Client, hymenoptera: Path,
                                       make_zip: Build) -> None:
    project = new_project(client)
    image = jpeg(hymenoptera)
    body = make_zip({"set/train/ants/a.jpg": image, "set/train/bees/b.jpg": image,
                     "set/val/bees/c.jpg": image, "set/loose.jpg": image,
                     "set/unlabeled/d.jpg": image, "set/notes.txt": b"hello",
                     "set/.hidden/e.jpg": image})
    reply = upload(client, project, "set.zip", body)
    assert reply.status_code == 201, reply.text
    assert reply.json()["added"] == 5
    assert reply.json()["skipped"] == ["set/notes.txt"]
    listing = client.get(f"/api/projects/{project}/items").json()
    assert listing["counts"] == {"ants": 1, "bees": 2, "unlabeled": 2}
    splits = {i["original"]: (i["label"], i["split"]) for i in listing["items"]}
    assert splits["train/ants/a.jpg"] == ("ants", "train")
    assert splits["val/bees/c.jpg"] == ("bees", "val")
    assert splits["loose.jpg"] == (None, None)
    unlabeled = client.get(f"/api/projects/{project}/items", params={"label": "unlabeled"})
    item = unlabeled.json()["items"][0]
    assert client.get(item["url"]).content == image
    fixed = client.patch(f"/api/projects/{project}/items/{item['id']}", json={"label": "ants"})
    assert fixed.json()["label"] == "ants"
    counts = client.get(f"/api/projects/{project}").json()["counts"]
    assert counts == {"ants": 2, "bees": 2, "unlabeled": 1}
    bad = client.patch(f"/api/projects/{project}/items/{item['id']}", json={"label": "a/b"})
    assert bad.status_code == 400 and "label" in bad.json()["error"]
    single = upload(client, project, "one.jpg", image, label="bees")
    assert single.json()["labels"] == {"bees": 1}
    wrong = upload(client, project, "song.mp3", b"ID3")
    assert wrong.status_code == 400 and ".jpg" in wrong.json()["error"]
    check = client.get(f"/api/projects/{project}/check").json()
    assert check["split"] == "folders"
    assert any("duplicate" in i["reason"] for i in check["issues"])  # the same bytes 5 times


@pytest.mark.parametrize(("entries", "message"), [
    ({"ants/../../evil.jpg": b"x"}, "'..'"),
    ({"/etc/evil.jpg": b"x"}, "absolute path"),
    ({"C:/evil.jpg": b"x"}, "absolute path"),
])
def test_zip_bad_entries_are_refused_whole(client: httpx.Client, make_zip: Build,
                                           hymenoptera: Path, entries: dict[str, bytes],
                                           message: str) -> None:
    project = new_project(client)
    body = make_zip({"ants/good.jpg": jpeg(hymenoptera), **entries})
    reply = upload(client, project, "bad.zip", body)
    assert reply.status_code == 400
    assert message in reply.json()["error"] and "bad.zip" in reply.json()["error"]
    assert client.get(f"/api/projects/{project}").json()["items"] == 0  # nothing extracted


def test_zip_symlink_entry_is_refused(client: httpx.Client, hymenoptera: Path) -> None:
    project = new_project(client)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ants/good.jpg", jpeg(hymenoptera))
        link = zipfile.ZipInfo("ants/passwd.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    reply = upload(client, project, "links.zip", buffer.getvalue())
    assert reply.status_code == 400
    assert "symbolic link" in reply.json()["error"] and "ants/passwd.jpg" in reply.json()["error"]
    assert client.get(f"/api/projects/{project}").json()["items"] == 0


def test_not_a_zip_and_zip_bomb(client: httpx.Client, make_zip: Build) -> None:
    project = new_project(client)
    reply = upload(client, project, "data.zip", b"PK\x03\x04 this is not really a zip")
    assert reply.status_code == 400 and "not a valid zip" in reply.json()["error"]
    bomb = make_zip({"ants/zeros.jpg": bytes(8 * 1024 * 1024)})  # 8 MiB → ~8 KiB
    reply = upload(client, project, "bomb.zip", bomb)
    assert reply.status_code == 400 and "ratio" in reply.json()["error"]


def test_upload_limits(tmp_path: Path, database: str | None, start_app: Start,
                       make_zip: Build) -> None:
    settings = AppSettings(data_dir=tmp_path / "mint", database=database,
                           serve_url="http://127.0.0.1:9", upload_max_bytes=10_000,
                           zip_max_entries=3)
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        project = new_project(client)
        declared = upload(client, project, "big.jpg", bytes(20_000))
        assert declared.status_code == 413 and "10000" in declared.json()["error"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            for _ in range(5):
                yield bytes(4096)

        streamed = upload(client, project, "big.jpg", chunked())
        assert streamed.status_code == 413
        assert not list((settings.projects_dir / str(project) / "incoming").iterdir())
        many = make_zip({f"ants/{i}.jpg": b"x" for i in range(4)})
        reply = upload(client, project, "many.zip", many)
        assert reply.status_code == 400 and "4 entries" in reply.json()["error"]


def test_unknown_project_and_job(client: httpx.Client) -> None:
    for method, path in [("GET", "/api/projects/999"), ("GET", "/api/projects/999/items"),
                         ("POST", "/api/projects/999/uploads?filename=a.jpg"),
                         ("DELETE", "/api/projects/999"), ("GET", "/api/jobs/999"),
                         ("GET", "/projects/999/data")]:
        reply = client.request(method, path, content=b"x" if method == "POST" else None)
        assert reply.status_code == 404, (method, path, reply.text)
        assert "999" in reply.json()["error"]
    project = new_project(client)
    reply = client.post(f"/api/projects/{project}/jobs", json={"budget": 60})
    assert reply.status_code == 400 and "at least 2 labels" in reply.json()["error"]


def test_token_required_when_exposed(tmp_path: Path, database: str | None,
                                     start_app: Start) -> None:
    # Bound off loopback (the setting), yet listening on 127.0.0.1 here: the token rules apply.
    settings = AppSettings(data_dir=tmp_path / "mint", database=database,
                           serve_url="http://127.0.0.1:9", host="0.0.0.0")
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        token = settings.token_file.read_text().strip()
        assert stat.S_IMODE(settings.token_file.stat().st_mode) == 0o600
        missing = client.post("/api/projects", json={"name": "x"})
        assert missing.status_code == 401 and "Bearer" in missing.json()["error"]
        assert client.get("/api/projects").status_code == 401
        page = client.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        wrong = client.get("/api/projects", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.post("/api/projects", json={"name": "x"},
                         headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 201
        login = client.post("/api/session", data={"token": token}, follow_redirects=False)
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert client.get("/api/projects").status_code == 200  # the cookie now
        evil = client.post("/api/projects", json={"name": "y"},
                           headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and "cross-site" in evil.json()["error"]
    with start_app(settings):  # a restart keeps the token and does not print a new one
        assert settings.token_file.read_text().strip() == token


def test_text_and_sound_projects_take_their_files(client: httpx.Client, hymenoptera: Path,
                                                  make_zip: Build) -> None:
    shared = hymenoptera.parent
    text = new_project(client, "spam", task="text")
    table = "".join((shared / "sms_spam" / "sms_spam.tsv").read_text().splitlines(True)[:41])
    reply = upload(client, text, "sms_spam.tsv", table.encode())
    assert reply.status_code == 201, reply.text
    assert reply.json()["added"] == 40 and set(reply.json()["labels"]) <= {"ham", "spam"}
    item = client.get(f"/api/projects/{text}/items", params={"limit": 1}).json()["items"][0]
    assert client.get(item["url"]).text.strip() in table
    bad = upload(client, text, "one.csv", b"just one column\nhello\n")
    assert bad.status_code == 400 and "header" in bad.json()["error"]
    sound = new_project(client, "digits", task="sound")
    wavs = sorted((shared / "spoken_digits" / "3").glob("*.wav"))[:2]
    body = make_zip({f"3/{p.name}": p.read_bytes() for p in wavs} | {"3/x.jpg": b"no"})
    reply = upload(client, sound, "digits.zip", body)
    assert reply.json()["added"] == 2 and reply.json()["skipped"] == ["3/x.jpg"]


def test_migrations_upgrade_an_older_database(tmp_path: Path, database: str | None) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    from modelmint._app import db

    settings = AppSettings(data_dir=tmp_path / "mint", database=database)
    settings.make_dirs()
    engine = db.make_engine(settings.database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO projects (name, slug, task, created, data_revision) "
                          "VALUES ('old', 'old', 'image', 'then', 0)"))
        conn.execute(text("INSERT INTO items (project_id, original, suffix, size, created) "
                          "VALUES (1, 'a.jpg', '.jpg', 3, 'then')"))
        conn.execute(text("INSERT INTO jobs (project_id, status, budget, attempts, created) "
                          "VALUES (1, 'succeeded', 60, 1, 'then')"))
    assert "max_trials" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    db.migrate(engine)  # what every app start does
    assert "max_trials" in {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert "retired_slugs" in inspect(engine).get_table_names()
    with db.session_factory(engine).begin() as session:
        old = session.get(db.Project, 1)
        assert old is not None and old.name == "old"
        # Tables copied by the migration kept their rows (no cascade from the old table).
        assert session.get(db.Item, 1) is not None and session.get(db.Job, 1) is not None
        newest = db.Project(name="new", slug="new", task="image")
        session.add(newest)
        session.flush()
        assert newest.id == 2
        session.delete(newest)
    with db.session_factory(engine).begin() as session:
        again = db.Project(name="again", slug="again", task="image")
        session.add(again)
        session.flush()
        assert again.id == 3  # the deleted largest id is not handed out again
        session.delete(session.get(db.Project, 1))
    with db.session_factory(engine)() as session:  # foreign keys are on again: cascade
        assert session.get(db.Item, 1) is None and session.get(db.Job, 1) is None
    engine.dispose()


def test_pages_use_only_local_assets(client: httpx.Client) -> None:
    import re

    project = new_project(client)
    pages = ["/", "/login", *(f"/projects/{project}/{tab}" for tab in
                             ("data", "label", "train", "evaluate", "deploy"))]
    for path in [*pages, "/static/app.js", "/static/model.js", "/static/app.css"]:
        reply = client.get(path)
        assert reply.status_code == 200, path
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", reply.text), path
        assert "@import" not in reply.text, path
    assert client.get("/docs").status_code == 404  # Swagger UI would pull a CDN
    missing = client.get(f"/projects/{project}/nope")
    assert missing.status_code == 404 and "pages are" in missing.json()["error"]
