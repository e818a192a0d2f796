"""Fixtures for the web app: a real app (uvicorn on a free 127.0.0.1 port) on SQLite and — where
PostgreSQL is installed — on a fresh database of the session's PostgreSQL (``postgres_url``)."""

from __future__ import annotations

import io
import os
import uuid
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from live_server import running_app
from modelmint._app import AppSettings

HERE = Path(__file__).resolve().parent
UNUSED_SERVER = "http://127.0.0.1:9"  # tests that never deploy: no `mint serve` is started


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the data dir) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    import psycopg

    server: str = request.getfixturevalue("postgres_url")  # tests/conftest.py; skips if absent
    name = f"mint_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def settings(tmp_path: Path, database: str | None) -> AppSettings:
    return AppSettings(data_dir=tmp_path / "mint", database=database, serve_url=UNUSED_SERVER)


@pytest.fixture
def start_app() -> Callable[[AppSettings], AbstractContextManager[str]]:
    return running_app


@pytest.fixture
def make_zip() -> Callable[[dict[str, bytes]], bytes]:
    def build(entries: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
        return buffer.getvalue()

    return build


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots of the browser tests: tests/app/artifacts/ (git-ignored) or $MINT_ARTIFACTS."""
    path = Path(os.environ.get("MINT_ARTIFACTS", HERE / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
