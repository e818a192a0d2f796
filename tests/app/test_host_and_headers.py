"""DNS rebinding and framing: a request whose Host is a name the app was not given is refused on
every route (API, pages, static files, the schema, the login), and every response carries the
headers that keep browsers from framing the app or sniffing its content types."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from modelmint._app import AppSettings
from modelmint._app.edge import PAGE_POLICY
from modelmint.errors import InvalidInput

Start = Callable[[AppSettings], AbstractContextManager[str]]
REBIND = "rebind.attacker.example"


@pytest.fixture
def app_url(tmp_path: Path, start_app: Start) -> Iterator[str]:
    settings = AppSettings(data_dir=tmp_path / "mint", serve_url="http://127.0.0.1:9",
                           allowed_hosts=["Mint.Example.ORG"])
    with start_app(settings) as url:
        yield url


def test_a_rebound_name_is_refused_on_every_route(app_url: str) -> None:
    port = app_url.rsplit(":", 1)[1]
    evil = {"Host": f"{REBIND}:{port}", "Origin": f"http://{REBIND}:{port}"}
    with httpx.Client(base_url=app_url, timeout=30) as client:
        created = client.post("/api/projects", json={"name": "rebound"}, headers=evil)
        assert created.status_code == 400, created.text
        assert REBIND in created.json()["error"] and "--allowed-host" in created.json()["error"]
        for method, path in [("GET", "/api/projects"), ("GET", "/openapi.json"), ("GET", "/"),
                             ("GET", "/login"), ("GET", "/static/app.js"),
                             ("POST", "/api/session"), ("DELETE", "/api/projects/1"),
                             ("GET", "/no/such/page")]:
            reply = client.request(method, path, headers=evil)
            assert reply.status_code == 400, (method, path, reply.status_code)
        assert client.get("/api/projects").json() == []  # nothing was created
        for host in (f"{REBIND}.", "127.0.0.1.evil.example", "localhost.evil.example",
                     "mint.example.org.evil.example", "", "[::1", "127.0.0.1:80:80"):
            reply = client.get("/api/projects", headers={"Host": host})
            assert reply.status_code == 400, host


def test_loopback_names_addresses_and_allowed_hosts_are_served(app_url: str) -> None:
    port = app_url.rsplit(":", 1)[1]
    with httpx.Client(base_url=app_url, timeout=30) as client:
        for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", f"[::1]:{port}",
                     "mint.example.org", f"MINT.example.org.:{port}", "192.0.2.7:8080",
                     "[2001:db8::1]"):
            reply = client.get("/api/projects", headers={"Host": host})
            assert reply.status_code == 200, host
        # The cross-site guard still compares Origin with this Host.
        ok = client.post("/api/projects", json={"name": "x"},
                         headers={"Host": "mint.example.org", "Origin": "http://mint.example.org"})
        assert ok.status_code == 201
        cross = client.post("/api/projects", json={"name": "y"},
                            headers={"Host": "mint.example.org", "Origin": "http://localhost"})
        assert cross.status_code == 403


def test_every_response_carries_the_security_headers(app_url: str) -> None:
    with httpx.Client(base_url=app_url, timeout=30) as client:
        project = client.post("/api/projects", json={"name": "p"}).json()["id"]
        replies = [client.get("/"), client.get(f"/projects/{project}/data"),
                   client.get("/static/app.css"), client.get("/api/projects"),
                   client.get("/openapi.json"), client.get("/api/projects/999"),
                   client.post("/api/projects", json={"task": "video"}),
                   client.get("/api/projects", headers={"Host": REBIND})]
        assert [r.status_code for r in replies] == [200, 200, 200, 200, 200, 404, 400, 400]
        for reply in replies:
            assert reply.headers["x-frame-options"] == "DENY", reply.url
            assert reply.headers["x-content-type-options"] == "nosniff", reply.url
            assert reply.headers["content-security-policy"] == PAGE_POLICY, reply.url
            assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]


def test_the_host_setting_and_bad_allowed_hosts(tmp_path: Path, start_app: Start) -> None:
    settings = AppSettings(data_dir=tmp_path / "mint", serve_url="http://127.0.0.1:9",
                           host="mint.internal")
    with start_app(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        token = settings.token_file.read_text().strip()  # a host name: off loopback
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/projects", headers={"Host": "mint.internal:8080", **auth}
                          ).status_code == 200
        assert client.get("/api/projects", headers={"Host": "other.internal", **auth}
                          ).status_code == 400
    assert AppSettings(allowed_hosts=["[::1]", "Example.COM.", "*"]).allowed_hosts == [
        "::1", "example.com", "*"]
    for bad in ("example.com:8080", "http://example.com", "a b", "exa$mple.com", ""):
        with pytest.raises(InvalidInput, match="--allowed-host"):
            AppSettings(allowed_hosts=[bad])
