"""Fixtures for the s3:// repository: real moto S3 servers on loopback (one per session, and
one that checks credentials as AWS does), a fresh bucket per test, and a throttling TCP proxy
that makes downloads slow on demand.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

SERVE_CONFTEST = Path(__file__).resolve().parents[1] / "serve" / "conftest.py"
# Requests moto serves before it checks credentials: the fixture's IAM setup (3 calls).
SETUP_REQUESTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


def spawn_moto(auth_after: int | None = None) -> MotoServer:
    """A moto S3 server starting on a free loopback port (see :func:`wait_up`)."""
    port = free_port()
    env = {**os.environ}
    if auth_after is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    return MotoServer(process, port)


def wait_up(server: MotoServer) -> MotoServer:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            return server
        except OSError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                server.process.kill()
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class Credentials:
    key: str
    secret: str


@pytest.fixture(scope="session")
def moto_servers() -> Iterator[dict[str, MotoServer]]:
    """Every S3 server the session needs, started side by side (each takes seconds): the
    shared one, one that checks credentials, and a spare one for a test to kill."""
    servers = {"shared": spawn_moto(), "authenticating": spawn_moto(SETUP_REQUESTS),
               "spare": spawn_moto()}
    try:
        yield {name: wait_up(server) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def moto(moto_servers: dict[str, MotoServer]) -> tuple[MotoServer, Credentials]:
    """The session's S3 server (any access key will do: checking them costs 5x per request)."""
    return moto_servers["shared"], Credentials("testing", "testing")


@pytest.fixture(scope="session")
def authenticating_moto(moto_servers: dict[str, MotoServer]) -> tuple[MotoServer, Credentials]:
    """An S3 server that checks credentials as AWS does, and the one access key it accepts."""
    server = moto_servers["authenticating"]
    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="publisher")
    iam.put_user_policy(UserName="publisher", PolicyName="s3", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", '
        '"Resource": "*"}]}'))
    key = iam.create_access_key(UserName="publisher")["AccessKey"]
    return server, Credentials(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture
def spare_moto(moto_servers: dict[str, MotoServer]) -> MotoServer:
    """An S3 server of its own, for the one test that kills it."""
    return moto_servers["spare"]


def aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, creds: Credentials,
            cache: Path) -> None:
    """Point boto3's default chain at ``endpoint`` and nothing else on this machine."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a dead endpoint fails now, not in 30 s
    monkeypatch.setenv("MODELMINT_CACHE_DIR", str(cache))


@dataclass(frozen=True)
class Bucket:
    name: str
    endpoint: str
    creds: Credentials

    @property
    def uri(self) -> str:
        return f"s3://{self.name}/repo"

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.creds.key,
                            aws_secret_access_key=self.creds.secret)


def _new_bucket(server: MotoServer, creds: Credentials, monkeypatch: pytest.MonkeyPatch,
                cache: Path) -> Bucket:
    made = Bucket(f"models-{uuid.uuid4().hex[:12]}", server.endpoint, creds)
    made.client().create_bucket(Bucket=made.name)
    aws_env(monkeypatch, server.endpoint, creds, cache)
    return made


@pytest.fixture
def bucket(moto: tuple[MotoServer, Credentials], monkeypatch: pytest.MonkeyPatch,
           tmp_path: Path) -> Bucket:
    """A new empty bucket on the session's server, boto3's environment pointed at it."""
    return _new_bucket(*moto, monkeypatch, tmp_path / "cache")


@pytest.fixture
def authenticated_bucket(authenticating_moto: tuple[MotoServer, Credentials],
                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Bucket:
    """A new bucket on the server that checks credentials, boto3 holding the right key."""
    return _new_bucket(*authenticating_moto, monkeypatch, tmp_path / "cache")


class ThrottledProxy:
    """A loopback TCP proxy to ``target_port`` whose answers flow at ``rate`` bytes/second
    (None: unthrottled); when the target dies, its clients' connections drop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.rate: float | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def retarget(self, port: int, rate: float | None) -> None:
        """Forward to ``port`` from now on, dropping the connections open to the old target
        (clients reconnect, as after a network change)."""
        self.target_port, self.rate = port, rate
        with self._open_lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 2)
            except OSError:
                client.close()
                continue
            with self._open_lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while True:
                rate = self.rate if throttled else None
                data = src.recv(1024 if rate else 65536)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
                with self._open_lock:
                    self._open.discard(s)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@pytest.fixture
def proxy_bucket(bucket: Bucket, moto: tuple[MotoServer, Credentials],
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Bucket, ThrottledProxy]]:
    """``bucket`` reached through a throttling proxy (boto3's environment points at it)."""
    proxy = ThrottledProxy(moto[0].port)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    yield bucket, proxy
    proxy.close()


def _load_serve_conftest() -> Any:
    spec = importlib.util.spec_from_file_location("serve_fixtures", SERVE_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny image classifier, published into a local repository by the serving tests'
    own publisher (``publish_tiny``; exporting costs seconds: published once, copied to the
    bucket as every version)."""
    root = tmp_path_factory.mktemp("tiny-local")
    publish_tiny: Callable[..., Path] = _load_serve_conftest().publish_tiny
    return publish_tiny(root, "tiny")


def _copy_version(source: Path, padding: int = 0) -> Callable[[Path, int], None]:
    """A ``write`` for :meth:`ModelRepository.publish` copying a published version folder,
    its ``modelmint.json`` restamped with the new number, plus ``padding`` bytes of one more
    file (a version that takes a while to download through a throttled proxy)."""

    def write(tmp: Path, version: int) -> None:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        meta = json.loads((tmp / "modelmint.json").read_text())
        meta["version"] = version
        (tmp / "modelmint.json").write_text(json.dumps(meta, indent=2))
        if padding:
            (tmp / "padding.bin").write_bytes(os.urandom(padding))

    return write


@pytest.fixture(scope="session")
def copy_version() -> Callable[..., Callable[[Path, int], None]]:
    return _copy_version


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[int], ThrottledProxy]]:
    made: list[ThrottledProxy] = []

    def make(target_port: int) -> ThrottledProxy:
        made.append(ThrottledProxy(target_port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()
