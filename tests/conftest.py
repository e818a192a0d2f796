"""Session-wide fixtures: the sample data and ONE trained model shared by every test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from modelmint._search.options import TrainOptions
from modelmint._search.run import TrainResult, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HYMENOPTERA = SHARED / "hymenoptera"
# A ceiling for the fixed recipe on a loaded 2-core CI machine; it takes ~25 s on an idle one.
TRAIN_BUDGET = float(os.environ.get("MINT_TEST_TRAIN_BUDGET", "90"))
# The linear head trains to convergence first; one fine-tuning epoch after it shows both stages
# (several epochs and their resume: tests/train/test_resume.py).
TRAIN_EPOCHS = 1


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.fail(f"sample data missing: {HYMENOPTERA} (shared/ must sit beside the repo)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path) -> TrainResult:
    """The hymenoptera model, trained once per test session by the fixed recipe."""
    base = tmp_path_factory.mktemp("trained")
    return train(TrainOptions(data=str(hymenoptera), name="bees", repo=str(base / "models"),
                              runs_dir=str(base / "runs"), budget=TRAIN_BUDGET,
                              epochs=TRAIN_EPOCHS),
                 Console(quiet=True))


@pytest.fixture(scope="session")
def trained_repo(trained: TrainResult) -> Path:
    return Path(trained.run_dir).parents[1] / "models"


# --- PostgreSQL, started once per test run (shared Optuna storage; the web app too) ---------------
def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on 127.0.0.1 and a free port, as
    ``postgresql://mint@127.0.0.1:PORT/mint`` (trust auth; SQLAlchemy wants the
    ``postgresql+psycopg://`` spelling for psycopg 3). initdb refuses to run as root, so as
    root the cluster belongs to the ``postgres`` system user. Skips when PostgreSQL is absent."""
    import shutil
    import socket
    import subprocess
    import tempfile
    import time

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="mint-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres", "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = base / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "mint",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    server = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
         "-h", "127.0.0.1", "-k", str(base), "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"PostgreSQL did not start on port {port}")
            time.sleep(0.2)
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "mint", "mint"], check=True, capture_output=True)
        yield f"postgresql://mint@127.0.0.1:{port}/mint"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(base, ignore_errors=True)


# --- One local Ray cluster (a head and two workers on loopback) for every test that needs Ray -----
@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """Started once per run (20-40 s on 2 cores); ``MINT_TEST_RAY=0`` skips its tests. Its
    tests run last (:func:`pytest_collection_modifyitems`), so its idle processes do not run
    beside the rest of the suite."""
    if os.environ.get("MINT_TEST_RAY") == "0":
        pytest.skip("MINT_TEST_RAY=0: no local Ray cluster")
    pytest.importorskip("ray", reason="Ray is not installed")
    from ray_cluster import local_cluster

    with local_cluster(workers=2) as cluster:
        yield cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the Ray cluster last, together (a stable sort keeps each group's order)."""
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))


@pytest.fixture
def anyio_backend() -> str:
    """The server is asyncio; selenium pulls in trio, which anyio would otherwise also run."""
    return "asyncio"
