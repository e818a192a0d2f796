"""``mint stats``: live latency percentiles of a running server, from its
``/v2/models/{m}/stats`` endpoint (exact values over the server's sliding window, see
:mod:`modelmint._serve.metrics`).

Kept apart from :mod:`modelmint._serve` so the command needs only httpx and rich, not the
serving stack (onnxruntime, uvicorn).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx
from rich.table import Table

from ._serve.v2client import TOKEN_VARIABLE
from .errors import MintError

COLUMNS = ("p50", "p90", "p99", "p999", "max")


def _get(http: httpx.Client, method: str, path: str) -> Any:
    try:
        response = http.request(method, path)
    except httpx.HTTPError as exc:
        raise MintError(f"cannot reach {http.base_url}: {exc}") from exc
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise MintError(f"{method} {path}: HTTP {response.status_code}: {message}")
    return response.json()


def list_models(http: httpx.Client) -> list[str]:
    """Model names from the V2 repository extension (``POST /v2/repository/index``)."""
    try:
        index = _get(http, "POST", "/v2/repository/index")
    except MintError as exc:
        raise MintError(f"the server does not list its models ({exc}); pass --model") from exc
    # IGNORED entries are folder contents that are not versions: a folder of only those is
    # no model to ask for stats.
    return sorted({str(entry["name"]) for entry in index
                   if isinstance(entry, dict) and entry.get("state") != "IGNORED"})


def fetch_stats(url: str, models: list[str] | None = None,
                timeout: float = 10.0) -> list[dict[str, Any]]:
    """One stats object per model (``models``, or every model the server lists)."""
    base = url if "://" in url else f"http://{url}"
    token = os.environ.get(TOKEN_VARIABLE)  # as the V2 client does
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base.rstrip("/"), timeout=timeout, headers=headers) as http:
        names = models or list_models(http)
        return [_get(http, "GET", f"/v2/models/{quote(name, safe='')}/stats") for name in names]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def stats_table(stats: list[dict[str, Any]], title: str) -> Table:
    """A row per model version: total latency percentiles in ms, requests and failures."""
    window = stats[0]["window_s"] if stats else 0
    table = Table(title=f"{title} (latency ms, last {window:.0f} s)")
    for column in ("model", "version", *COLUMNS, "count", "failures"):
        table.add_column(column, justify="left" if column in ("model", "version") else "right")
    for model in stats:
        if not model["versions"]:
            table.add_row(model["model"], "-", *["-"] * len(COLUMNS), "0", "0")
        for entry in model["versions"]:
            total = entry["total_ms"]
            table.add_row(model["model"], entry["version"],
                          *[_ms(total.get(c)) for c in COLUMNS], str(total["count"]),
                          str(entry["failures"]))
    return table
