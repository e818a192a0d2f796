"""Schemathesis against the app's own ``/openapi.json``, on a real app on loopback: no request the
schema allows — nor one it forbids — gets a server error (5xx); and with the app bound off
loopback, every route that changes state (POST, PUT, PATCH, DELETE) refuses a request that
carries no token, and nothing changes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, Response
from schemathesis.generation import GenerationMode

from modelmint._app import AppSettings

Start = Callable[[AppSettings], AbstractContextManager[str]]
EXAMPLES = 10  # per operation and generation mode: the whole file stays within a minute
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
Check = Callable[[Case[Any], Response], None]


def operations(url: str, headers: dict[str, str]) -> list[Any]:
    reply = httpx.get(f"{url}/openapi.json", headers=headers)
    assert reply.status_code == 200, reply.text
    schema = schemathesis.openapi.from_dict(reply.json())
    found = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(found) >= 15, [f"{op.method} {op.path}" for op in found]
    return found


def fuzz(url: str, operation: Any, check: Check) -> None:
    with requests.Session() as session:
        for mode in GenerationMode:
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Case[Any]) -> None:
                check(case, case.call(base_url=url, session=session, timeout=60))

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                if mode is GenerationMode.POSITIVE:
                    raise


def described(case: Case[Any], reply: Response) -> str:
    return (f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.200}"
            f" -> {reply.status_code} {reply.text[:300]}")


@pytest.fixture
def loopback_app(tmp_path: Path, start_app: Start) -> Iterator[str]:
    app = AppSettings(data_dir=tmp_path / "mint", serve_url="http://127.0.0.1:9")
    with start_app(app) as url:
        yield url


def test_no_request_gets_a_server_error(loopback_app: str) -> None:
    def no_5xx(case: Case[Any], reply: Response) -> None:
        assert reply.status_code < 500, described(case, reply)

    for operation in operations(loopback_app, {}):
        fuzz(loopback_app, operation, no_5xx)


def test_off_loopback_every_change_needs_the_token(tmp_path: Path, start_app: Start) -> None:
    app = AppSettings(data_dir=tmp_path / "mint", serve_url="http://127.0.0.1:9",
                      host="0.0.0.0")
    with start_app(app) as url:
        token = {"Authorization": f"Bearer {app.token_file.read_text().strip()}"}
        mutating = [op for op in operations(url, token) if op.method.upper() in MUTATING]
        assert {op.method.upper() for op in mutating} >= {"POST", "PATCH", "DELETE"}

        def refused(case: Case[Any], reply: Response) -> None:
            assert reply.status_code in (401, 403), described(case, reply)

        for operation in mutating:
            fuzz(url, operation, refused)
        assert httpx.get(f"{url}/api/projects", headers=token).json() == []
        # A client resolves '..' in a fuzzed path, which can land a change on a page's path:
        # refused as well, not answered with the login page.
        assert httpx.post(f"{url}/jobs/1/resume").status_code == 401
        assert httpx.get(f"{url}/projects/1/data").status_code == 303  # a visit: log in
