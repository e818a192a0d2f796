"""Metrics: Prometheus series on the metrics port, exact percentiles at ``/stats``, and
``mint stats``; requests over HTTP and gRPC are counted in the one shared place."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from modelmint._serve.metrics import LATENCY_BUCKETS, Metrics, percentiles
from modelmint._serve.server import ModelServer

OK_HTTP, OK_GRPC = 6, 2


@pytest.fixture(scope="module")
def server(repo_root: Path, start_full_server: Callable[..., Any]) -> Iterator[ModelServer]:
    with start_full_server(repo_root, grpc_port=0, metrics_port=0) as (server, _):
        yield server


@pytest.fixture(scope="module")
def traffic(server: ModelServer) -> ModelServer:
    """OK_HTTP + OK_GRPC good requests, one invalid one, one for an unknown model."""
    batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    for _ in range(OK_HTTP):
        http.infer("tiny", [tensor])
    bad = httpx.post(f"{server.url}/v2/models/tiny/infer",
                     json={"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1],
                                       "data": [1.0]}]})
    assert bad.status_code == 400
    assert httpx.post(f"{server.url}/v2/models/ghost/infer", json={"inputs": []}
                      ).status_code == 404
    http.close()
    assert server.grpc is not None
    with grpcclient.InferenceServerClient(server.grpc.address) as grpc:
        gtensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
        gtensor.set_data_from_numpy(batch)
        for _ in range(OK_GRPC):
            grpc.infer("tiny", [gtensor])
    return server


def scrape(server: ModelServer) -> dict[str, list[Any]]:
    assert server.metrics is not None
    response = httpx.get(server.metrics.url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = text_string_to_metric_families(response.text)
    return {f.name: f.samples for f in families}


def value(samples: list[Any], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return float(found[0])


def test_metrics_port_serves_only_metrics(server: ModelServer) -> None:
    assert server.metrics is not None and server.metrics.port != int(server.url.split(":")[-1])
    assert httpx.get(server.metrics.url.replace("/metrics", "/v2")).status_code == 404


def test_counters_per_model_and_version(traffic: ModelServer) -> None:
    m = scrape(traffic)
    requests = m["modelmint_inference_requests"]
    total = OK_HTTP + OK_GRPC + 1
    assert value(requests, "modelmint_inference_requests_total", model="tiny",
                 version="2") == total
    failures = m["modelmint_inference_failures"]
    assert value(failures, "modelmint_inference_failures_total", model="tiny", version="2",
                 error="InvalidInput") == 1
    # A client-chosen unknown name must not become a label (the 404 is not a model's request).
    assert not any(s.labels.get("model") == "ghost" for f in m.values() for s in f)


def test_histograms_count_successes(traffic: ModelServer) -> None:
    m = scrape(traffic)
    ok = OK_HTTP + OK_GRPC
    for family in ("modelmint_request_duration_seconds", "modelmint_queue_duration_seconds",
                   "modelmint_compute_duration_seconds", "modelmint_batch_size"):
        samples = m[family]
        assert value(samples, f"{family}_count", model="tiny", version="2") == ok, family
        assert value(samples, f"{family}_bucket", model="tiny", version="2", le="+Inf") == ok
    buckets = [s for s in m["modelmint_request_duration_seconds"]
               if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"]
    assert len(buckets) == len(LATENCY_BUCKETS)
    assert value(m["modelmint_batch_size"], "modelmint_batch_size_sum", model="tiny",
                 version="2") == ok  # every request was one row
    # Loaded versions (lifecycle) and their load time are reported by the data plane.
    versions = m["modelmint_model_versions"]
    assert any(s.labels["model"] == "tiny" and s.value == 1 for s in versions)


def test_stats_percentiles(traffic: ModelServer) -> None:
    stats = httpx.get(f"{traffic.url}/v2/models/tiny/stats").json()
    assert stats["model"] == "tiny" and stats["window_s"] > 0
    [entry] = stats["versions"]
    assert entry["version"] == "2" and entry["failures"] == 1
    total = entry["total_ms"]
    assert total["count"] == OK_HTTP + OK_GRPC
    assert 0 < total["p50"] <= total["p90"] <= total["p99"] <= total["p999"] <= total["max"]
    assert entry["compute_ms"]["max"] <= total["max"]
    by_version = httpx.get(f"{traffic.url}/v2/models/tiny/versions/2/stats").json()
    assert by_version["versions"][0]["total_ms"]["count"] == total["count"]
    assert httpx.get(f"{traffic.url}/v2/models/ghost/stats").status_code == 404


def test_window_percentiles_are_exact_nearest_rank() -> None:
    got = percentiles(np.arange(1, 1001, dtype=np.float64))
    assert (got["p50"], got["p90"], got["p99"], got["p999"], got["max"]) == (
        500, 900, 990, 999, 1000)
    metrics = Metrics()
    metrics.set_state("m", "1", "LOADING")
    metrics.set_state("m", "1", "READY")
    metrics.set_state("m", "2", "READY")
    metrics.set_state("m", "2", "unloaded")
    text = metrics.exposition().decode()
    assert 'modelmint_model_versions{model="m",state="READY",version="1"} 1.0' in text
    assert 'state="LOADING"' not in text and 'version="2"' not in text


def test_mint_stats_prints_the_model_row(traffic: ModelServer) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "modelmint.cli", "stats", traffic.url, "--model", "tiny"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "tiny" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:2] == ["tiny", "2"] and cells[-2:] == [str(OK_HTTP + OK_GRPC), "1"], row
    # Without --model: every model the repository index lists.
    listed = subprocess.run([*cmd[:-2], "--json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    [tiny] = json.loads(listed.stdout)
    assert tiny["model"] == "tiny" and tiny["versions"][0]["version"] == "2"


def test_mint_serve_metrics_port(repo_root: Path) -> None:
    """The CLI option end to end: a real process prints and serves its metrics URL."""
    cmd = [sys.executable, "-m", "modelmint.cli", "serve", str(repo_root), "--http-port", "0",
           "--grpc-port", "-1", "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("serving 1 model(s) on http://127.0.0.1:"), ready
        match = re.fullmatch(r"metrics on (http://127\.0\.0\.1:\d+/metrics)\n",
                             proc.stdout.readline())
        assert match
        body = httpx.get(match.group(1)).text
        assert "modelmint_model_versions" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
