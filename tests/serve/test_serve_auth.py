"""Who may call what on the model server: browser guards, the Host allowlist, the access token
over HTTP and gRPC, the refusal to serve off loopback without a token, and read deadlines.

Every server here listens on 127.0.0.1. "Off loopback" is the policy a ``--host 0.0.0.0``
server gets (:func:`access_policy`), applied to a loopback socket, so no test opens a port to
the network.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelmint._serve.auth import AccessPolicy, access_policy, load_or_create_token
from modelmint._serve.server import ModelServer
from modelmint.errors import MintError

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
EVIL = "http://evil.example"
Run = Callable[..., AbstractContextManager[ModelServer]]


@pytest.fixture(scope="module")
def running(start_full_server: Callable[..., AbstractContextManager[tuple[ModelServer, Any]]]
            ) -> Run:
    """The real server assembly with a policy, HTTP and gRPC on free loopback ports."""

    @contextmanager
    def run(repo: Path, policy: AccessPolicy, read_timeout_s: float = 60.0
            ) -> Iterator[ModelServer]:
        with start_full_server(repo, policy=policy, read_timeout_s=read_timeout_s) as (s, _):
            yield s

    return run


def grpc_address(server: ModelServer) -> str:
    assert server.grpc is not None
    return str(server.grpc.address)


def infer_body(image: bytes) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(image).decode()]}]}


def image_input(image: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    return tensor


def grpc_status(call: Callable[[], object]) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status())


# --- on loopback, no token: the browser guards and the Host allowlist ----------------------

@pytest.fixture(scope="module")
def loopback(repo_root: Path, running: Run) -> Iterator[ModelServer]:
    with running(repo_root, AccessPolicy()) as server:
        yield server


@pytest.fixture(scope="module")
def http(loopback: ModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=loopback.url, timeout=60) as client:
        yield client


def test_a_cross_origin_form_post_cannot_unload(http: httpx.Client) -> None:
    reply = http.post("/v2/repository/models/tiny/unload", content="x=1",
                      headers={"Origin": EVIL, **FORM})
    assert reply.status_code == 403, reply.text
    assert EVIL in reply.json()["error"]
    for headers in ({"Origin": EVIL}, {"Origin": "null"}):  # JSON from a page: still refused
        assert http.post("/v2/repository/models/tiny/unload", json={},
                         headers=headers).status_code == 403
    assert http.get("/v2/models/tiny/ready").status_code == 200


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "text/plain"])
def test_the_repository_api_takes_json_only(http: httpx.Client, content_type: str) -> None:
    for path in ("/v2/repository/models/tiny/unload", "/v2/repository/models/tiny/load",
                 "/v2/repository/index"):
        reply = http.post(path, content="{}", headers={"Content-Type": content_type})
        assert reply.status_code == 415, reply.text
        assert "application/json" in reply.json()["error"]
    assert http.get("/v2/models/tiny/ready").status_code == 200


def test_same_origin_json_and_tritonclient_may_manage(loopback: ModelServer,
                                                      http: httpx.Client) -> None:
    own = {"Origin": loopback.url}
    assert http.post("/v2/repository/index", json={}, headers=own).status_code == 200
    client = httpclient.InferenceServerClient(loopback.url.removeprefix("http://"))
    client.unload_model("tiny")  # no Content-Type and no Origin: not a browser
    assert not client.is_model_ready("tiny")
    client.load_model("tiny")
    assert client.is_model_ready("tiny")
    states = {(e["name"], e["version"]): e["state"]
              for e in client.get_model_repository_index()}
    assert states[("tiny", "2")] == "READY"


def test_a_model_cannot_be_sent_with_the_load_request(loopback: ModelServer) -> None:
    client = httpclient.InferenceServerClient(loopback.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="'config' is not supported"):
        client.load_model("tiny", config="{}")
    with grpcclient.InferenceServerClient(grpc_address(loopback)) as grpc_client:
        assert "INVALID_ARGUMENT" in grpc_status(
            lambda: grpc_client.load_model("tiny", files={"file:1/model.onnx": b"x"}))


@pytest.mark.parametrize("path", ["/v2/models/tiny", "/v2/repository/index", "/v2",
                                  "/v2/models/tiny/stats", "/v1/models/tiny", "/nowhere",
                                  "/v2/models/tiny/infer", "/v1/models/tiny:predict"])
def test_an_unknown_host_name_is_refused_everywhere(http: httpx.Client, path: str) -> None:
    method = "POST" if "repository" in path or path.endswith(("infer", "predict")) else "GET"
    reply = http.request(method, path, headers={"Host": "rebind.attacker.example:8000"})
    assert reply.status_code == 421, reply.text
    assert "--allowed-host rebind.attacker.example" in reply.json()["error"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1", "[::1]:9", "127.0.0.1",
                                  "10.1.2.3:8000", "[fe80::1]"])
def test_loopback_names_and_addresses_are_accepted(http: httpx.Client, host: str) -> None:
    assert http.get("/v2/models/tiny", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready",
                                  "/v2/models/tiny/versions/2/ready"])
def test_probes_pass_whatever_the_host(http: httpx.Client, path: str) -> None:
    assert http.get(path, headers={"Host": "pod-10-1-2-3.cluster.local"}).status_code == 200


def test_errors_never_reveal_the_repository_path(http: httpx.Client, loopback: ModelServer,
                                                 repo_root: Path) -> None:
    reply = http.post("/v2/repository/models/nope/load")
    assert reply.status_code == 404
    assert "'nope'" in reply.text and str(repo_root) not in reply.text
    with (grpcclient.InferenceServerClient(grpc_address(loopback)) as client,
          pytest.raises(InferenceServerException) as info):
        client.load_model("nope")
    assert "NOT_FOUND" in str(info.value.status()) and str(repo_root) not in str(info.value)


def test_a_failed_version_is_reported_without_its_path(tmp_path: Path, running: Run,
                                                       publish: Callable[..., Path]) -> None:
    version_dir = publish(tmp_path, seed=0)
    (version_dir / "model.onnx").write_bytes(b"not onnx")
    with running(tmp_path, AccessPolicy()) as server:
        assert server.grpc is not None
        # The server's own reason names the file; what a client reads must not.
        assert str(tmp_path) in json.dumps(server.grpc.dataplane.repository_index())
        index = httpx.post(f"{server.url}/v2/repository/index", timeout=30).json()
        with grpcclient.InferenceServerClient(grpc_address(server)) as client:
            grpc_index = client.get_model_repository_index(as_json=True)
    (entry,) = index
    assert entry["state"] == "FAILED" and entry["reason"]
    assert str(tmp_path) not in json.dumps(index)
    assert str(tmp_path) not in json.dumps(grpc_index)
    assert grpc_index["models"][0]["reason"] == entry["reason"]


# --- off loopback: the token -------------------------------------------------------------

@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secrets") / "serve-token"


@pytest.fixture(scope="module")
def exposed(repo_root: Path, token_file: Path, running: Run) -> Iterator[tuple[ModelServer, str]]:
    """What ``mint serve --host 0.0.0.0 --token-file F`` enforces, on a loopback socket."""
    policy, created = access_policy("0.0.0.0", token_file)
    assert created and policy.token is not None
    with running(repo_root, policy) as server:
        yield server, policy.token


def test_the_token_file_is_private_and_kept(token_file: Path,
                                            exposed: tuple[ModelServer, str]) -> None:
    _, token = exposed
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == token
    assert load_or_create_token(token_file) == (token, False)  # the next start reuses it


def test_management_needs_the_token_off_loopback(exposed: tuple[ModelServer, str]) -> None:
    server, token = exposed
    with httpx.Client(base_url=server.url, timeout=60) as http:
        # Any byte may arrive in a header: a non-ASCII one is a wrong token, not a crash.
        wrong: list[dict[str, Any]] = [{}, {"Authorization": "Bearer wrong"},
                                       {"Authorization": token},
                                       {"Authorization": b"Bearer \xe9t\xe9"}]
        for headers in wrong:
            reply = http.post("/v2/repository/models/tiny/unload", json={}, headers=headers)
            assert reply.status_code == 401, reply.text
            assert reply.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer TOKEN" in reply.json()["error"]
            assert token not in reply.text
        assert http.post("/v2/repository/index").status_code == 401
        assert http.get("/v2/models/tiny/ready").status_code == 200

        auth = {"Authorization": f"Bearer {token}"}
        assert http.post("/v2/repository/models/tiny/unload", json={},
                         headers=auth).status_code == 200
        assert http.get("/v2/models/tiny/ready").status_code == 400  # unloaded
        assert http.post("/v2/repository/models/tiny/load", headers=auth).status_code == 200
        assert http.get("/v2/models/tiny/ready").status_code == 200


def test_inference_and_health_stay_open_off_loopback(exposed: tuple[ModelServer, str],
                                                     image_bytes: list[bytes]) -> None:
    server, _ = exposed
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/v2/models/tiny/infer", json=infer_body(image_bytes[0])
                         ).status_code == 200
        assert http.get("/v2/models/tiny").status_code == 200
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready"):
            assert http.get(path).status_code == 200
    with grpcclient.InferenceServerClient(grpc_address(server)) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        assert client.infer("tiny", [image_input(image_bytes[0])]).as_numpy(
            "probabilities").shape == (1, 2)


def test_tritonclient_http_manages_with_the_token(exposed: tuple[ModelServer, str]) -> None:
    server, token = exposed
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="access token"):
        client.unload_model("tiny")
    auth = {"Authorization": f"Bearer {token}"}
    client.unload_model("tiny", headers=auth)
    assert not client.is_model_ready("tiny")
    client.load_model("tiny", headers=auth)
    assert client.is_model_ready("tiny")


def test_grpc_repository_extension_needs_the_token(exposed: tuple[ModelServer, str]) -> None:
    server, token = exposed
    auth = {"authorization": f"Bearer {token}"}
    with grpcclient.InferenceServerClient(grpc_address(server)) as client:
        for call in (client.get_model_repository_index, lambda: client.load_model("tiny"),
                     lambda: client.unload_model("tiny"),
                     lambda: client.unload_model("tiny", headers={"authorization": "Bearer x"})):
            assert "UNAUTHENTICATED" in grpc_status(call)
        assert client.is_model_ready("tiny")

        index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
        assert {"name": "tiny", "version": "2", "state": "READY"} in index
        client.unload_model("tiny", headers=auth)
        assert not client.is_model_ready("tiny")
        client.load_model("tiny", headers=auth)
        assert client.is_model_ready("tiny")


def test_inference_may_require_the_token(repo_root: Path, tmp_path: Path,
                                         image_bytes: list[bytes], running: Run) -> None:
    policy, _ = access_policy("0.0.0.0", tmp_path / "token", require_token_for_inference=True)
    auth = {"Authorization": f"Bearer {policy.token}"}
    body = infer_body(image_bytes[0])
    with running(repo_root, policy) as server, httpx.Client(base_url=server.url,
                                                            timeout=60) as http:
        for path in ("/v2/models/tiny/infer", "/v1/models/tiny:predict"):
            assert http.post(path, json=body).status_code == 401
        assert http.get("/v2/models/tiny").status_code == 401
        assert http.post("/v2/models/tiny/infer", json=body, headers=auth).status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        with grpcclient.InferenceServerClient(grpc_address(server)) as client:
            tensor = image_input(image_bytes[0])
            assert "UNAUTHENTICATED" in grpc_status(lambda: client.infer("tiny", [tensor]))
            assert "UNAUTHENTICATED" in grpc_status(lambda: client.get_model_metadata("tiny"))
            assert client.infer("tiny", [tensor], headers={
                "authorization": f"Bearer {policy.token}"}).as_numpy("probabilities") is not None
            assert client.is_server_ready() and client.is_model_ready("tiny")


# --- refusing to start ---------------------------------------------------------------------

REFUSALS = [
    (["--host", "0.0.0.0"], "--insecure-no-token"),
    (["--host", "192.0.2.1"], "--token-file"),
    (["--host", "myhost.example"], "--token-file"),
    (["--require-token-for-inference"], "needs --token-file"),
    (["--token-file", "t", "--insecure-no-token"], "contradict"),
]
# Every refusal in one child process: `mint serve` through Typer's runner, as typed on the
# command line. The child's timeout catches a server that starts serving instead of refusing.
_INVOKE = """
import json, sys
from typer.testing import CliRunner
from modelmint.cli import app
for options in json.loads(sys.argv[2]):
    result = CliRunner().invoke(app, ["serve", sys.argv[1], "--http-port", "0", "--grpc-port",
                                      "-1", "--metrics-port", "-1", *options])
    print(json.dumps([result.exit_code, result.output]), flush=True)
"""


def test_mint_serve_refuses_to_start_unprotected(repo_root: Path, tmp_path: Path) -> None:
    """Exit 2 with the reason, before loading anything or binding a port."""
    child = subprocess.run(
        [sys.executable, "-c", _INVOKE, str(repo_root), json.dumps([o for o, _ in REFUSALS])],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "COLUMNS": "400"})
    results = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(results) == len(REFUSALS), child.stdout + child.stderr
    for (options, fragment), (code, output) in zip(REFUSALS, results, strict=True):
        assert code == 2, (options, output)
        assert fragment in " ".join(output.split()), (options, output)
        assert "serving" not in output
    assert not (tmp_path / "t").exists()


def test_access_policy_of_a_bind_address(tmp_path: Path) -> None:
    assert access_policy("127.0.0.1")[0] == AccessPolicy()
    assert access_policy("localhost")[0].token is None
    assert access_policy("::1")[0].token is None
    policy, _ = access_policy("0.0.0.0", insecure_no_token=True,
                              allowed_hosts=["Models.Example:8000", "models.internal."])
    assert policy.token is None
    assert policy.host_allowed("models.example") and policy.host_allowed("MODELS.INTERNAL:1")
    assert not policy.host_allowed("other.example")
    assert access_policy("127.0.0.1", allowed_hosts=["*"])[0].host_allowed("any.example")
    with pytest.raises(MintError, match="not a host name"):
        access_policy("127.0.0.1", allowed_hosts=["bad host:x/y"])


def test_a_broken_token_file_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(MintError, match="is empty"):
        load_or_create_token(empty)
    (tmp_path / "dir").mkdir()
    with pytest.raises(MintError, match="cannot read the token file"):
        load_or_create_token(tmp_path / "dir")


# --- read deadlines --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def impatient(repo_root: Path, running: Run) -> Iterator[ModelServer]:
    with running(repo_root, AccessPolicy(), read_timeout_s=0.5) as server:
        yield server


def _connect(server: ModelServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("head", [b"", b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_a_request_head_that_never_ends_is_cut_off(impatient: ModelServer, head: bytes) -> None:
    with _connect(impatient) as sock:
        started = time.monotonic()
        sock.sendall(head)
        assert _read_all(sock) == b""  # closed by the server, well before the 10 s timeout
        assert time.monotonic() - started < 5


def test_a_slow_body_gets_408(impatient: ModelServer) -> None:
    with _connect(impatient) as sock:
        sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"in")
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"not received within 0.5 s" in reply



def test_mint_predict_sends_the_token_from_the_environment(
        repo_root: Path, tmp_path: Path, running: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from modelmint._serve.v2client import TOKEN_VARIABLE
    from modelmint.cli import app

    policy, _ = access_policy("0.0.0.0", tmp_path / "token", require_token_for_inference=True)
    image = sorted((Path(__file__).resolve().parents[3] / "shared" / "data" / "hymenoptera"
                    / "val" / "bees").glob("*.jpg"))[0]
    command = ["predict", str(image), "--model", "tiny", "--json"]
    with running(repo_root, policy) as server:
        monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
        refused = CliRunner().invoke(app, [*command, "--url", server.url])
        assert refused.exit_code == 2, refused.output
        monkeypatch.setenv(TOKEN_VARIABLE, str(policy.token))
        allowed = CliRunner().invoke(app, [*command, "--url", server.url])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.output.strip().splitlines()[-1])["file"] == str(image)
