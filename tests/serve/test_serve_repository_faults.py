"""What a repository holds besides versions, and faults while polling it: odd folders are
reported once and ignored, deleted versions are reported as deleted, and no fault stops the
poll loop from applying the next good version. Real servers, real tritonclients."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from starlette.applications import Starlette
from tritonclient.utils import InferenceServerException

from modelmint._repository import METADATA_FILE, Ignored, ModelRepository, VersionRef
from modelmint._serve import DataPlane, create_app
from modelmint._serve.lifecycle import FAILED, READY, UNLOADED
from modelmint._serve.reporting import IGNORED

Serve = Callable[[Starlette], AbstractContextManager[str]]
ODD_VERSIONS = ("²", "٣", "007")  # each a complete copy of version 2


def index(client: httpclient.InferenceServerClient, model: str = "tiny"
          ) -> dict[str, tuple[str, str]]:
    return {e["version"]: (e["state"], e.get("reason", ""))
            for e in client.get_model_repository_index() if e["name"] == model}


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@contextmanager
def serving(repo: Path | ModelRepository, serve_app: Serve, poll: float = 0.0
            ) -> Iterator[tuple[DataPlane, httpclient.InferenceServerClient]]:
    plane = DataPlane(repo, isolation="thread")
    try:
        plane.load()
        with serve_app(create_app(plane)) as url:
            plane.start_polling(poll)
            client = httpclient.InferenceServerClient(url)
            try:
                yield plane, client
            finally:
                client.close()
    finally:
        plane.close()


@pytest.fixture()
def repo(tmp_path: Path, publish: Callable[..., Path]) -> Path:
    publish(tmp_path, seed=1)
    publish(tmp_path, seed=0)
    return tmp_path


def poller_alive(plane: DataPlane) -> bool:
    poller = plane.lifecycle._poller
    return poller is not None and poller.is_alive()


def test_odd_folders_are_reported_once_and_hot_updates_go_on(
        repo: Path, serve_app: Serve, publish: Callable[..., Path],
        caplog: pytest.LogCaptureFixture) -> None:
    for name in ODD_VERSIONS:
        shutil.copytree(repo / "tiny" / "2", repo / "tiny" / name)
    (repo / "tiny" / "4").mkdir()  # no modelmint.json: an unfinished copy
    (repo / "tiny" / "notes.txt").write_text("")
    (repo / "junk").mkdir()  # a model folder with nothing servable in it
    (repo / "junk" / "v1").mkdir()
    with caplog.at_level(logging.WARNING, logger="modelmint._serve"), \
            serving(repo, serve_app, poll=0.05) as (plane, client):
        time.sleep(0.5)  # several polls
        states = index(client)
        assert states["1"][0] == UNLOADED and states["2"] == (READY, "")
        for name in (*ODD_VERSIONS, "notes.txt"):
            assert states[name][0] == IGNORED
            assert "is not a version folder: version folders are named 1, 2, 3" in (
                states[name][1])
        assert states["4"] == (IGNORED, f"'tiny/4' has no {METADATA_FILE}: not a published "
                                        "version (an incomplete copy?)")
        assert list(states) == ["1", "2", "4", "007", "notes.txt", "²", "٣"]  # stable order
        assert index(client, "junk")["v1"][0] == IGNORED
        assert plane.lifecycle.served["tiny"].keys() == {2}  # "٣" is not version 3
        for name in (*ODD_VERSIONS, "4", "notes.txt"):
            assert caplog.text.count(f"'tiny/{name}' ") == 1, name  # once, not every poll
        assert caplog.text.count("'junk/v1' ") == 1

        publish(repo, seed=2)  # numbered past "4", the highest number in use
        wait_for(lambda: 5 in plane.lifecycle.served.get("tiny", {}))
        assert poller_alive(plane)
        client.load_model("tiny")
        assert index(client)["5"] == (READY, "")


class FaultyRepository(ModelRepository):
    """A real repository whose listing fails on demand, as a flaky network mount does."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listing_faults = 0  # how many listings of the root fail next
        self.cursed: set[str] = set()  # models whose every scan fails

    def model_folders(self) -> tuple[list[str], list[Ignored]]:
        if self.listing_faults > 0:
            self.listing_faults -= 1
            raise OSError("injected: the repository cannot be listed right now")
        return super().model_folders()

    def scan(self, model: str) -> tuple[list[VersionRef], list[Ignored]]:
        if model in self.cursed:
            raise RuntimeError(f"injected: scanning {model!r} blew up")
        return super().scan(model)


def test_faults_in_polling_are_logged_once_and_polling_goes_on(
        repo: Path, serve_app: Serve, publish: Callable[..., Path],
        caplog: pytest.LogCaptureFixture) -> None:
    publish(repo, "other")
    faulty = FaultyRepository(repo)
    with caplog.at_level(logging.ERROR, logger="modelmint._serve"), \
            serving(faulty, serve_app, poll=0.05) as (plane, client):
        faulty.cursed.add("other")  # its reconcile raises on every poll from now on
        faulty.listing_faults = 5  # the next five passes fail before reaching any model
        wait_for(lambda: faulty.listing_faults == 0)
        publish(repo, seed=2)
        wait_for(lambda: 3 in plane.lifecycle.served.get("tiny", {}))
        assert poller_alive(plane)
        assert caplog.text.count("polling the repository failed, polling goes on: OSError("
                                 "'injected: the repository cannot be listed") == 1
        assert caplog.text.count("polling model 'other' failed, polling goes on: "
                                 "RuntimeError(\"injected: scanning 'other' blew up\")") == 1
        assert plane.lifecycle.served["other"]  # what it served keeps serving
        faulty.cursed.clear()
        assert index(client)["3"] == (READY, "")


def test_deleted_versions_are_reported_as_deleted(repo: Path, serve_app: Serve) -> None:
    with serving(repo, serve_app) as (plane, client):
        shutil.rmtree(repo / "tiny" / "2")
        state, reason = index(client)["2"]
        assert state == READY and reason == (
            "its version folder 'tiny/2' was deleted; it serves from memory until the model "
            "is polled or loaded again")
        assert client.is_model_ready("tiny", "2")
        client.load_model("tiny")  # applies the repository as it is now: version 1
        assert index(client) == {"1": (READY, "")}

        (repo / "tiny" / "1" / METADATA_FILE).unlink()
        state, reason = index(client)["1"]
        assert state == READY and reason.startswith(f"'tiny/1' has no {METADATA_FILE}")
        shutil.rmtree(repo / "tiny")
        client.unload_model("tiny")
        assert index(client) == {"1": (UNLOADED, "its version folder 'tiny/1' was deleted; "
                                                 "unloaded")}
        assert plane.lifecycle.served == {}


def test_a_config_that_is_not_text_is_reported_not_a_500(repo: Path, serve_app: Serve) -> None:
    with serving(repo, serve_app) as (plane, client):
        (repo / "tiny" / "config.json").write_bytes(b"\xff\xfe{")
        state, reason = index(client)[""]
        assert state == FAILED and reason.endswith("config.json: not UTF-8 text (invalid start "
                                                   "byte)")
        with pytest.raises(InferenceServerException, match="not UTF-8 text") as info:
            client.load_model("tiny")
        assert info.value.status() == "400"
        assert plane.lifecycle.served["tiny"].keys() == {2}  # keeps what it serves
