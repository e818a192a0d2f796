"""Serving from an s3:// repository: ``mint serve s3://...`` end to end with a hot update
published to the bucket, and the serving version kept through slow downloads and a partition
of the S3 server mid-download."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from live_server import full_server
from modelmint._repository.s3_repository import S3Repository

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hymenoptera" / \
    "val" / "ants"


def image_request() -> list[httpclient.InferInput]:
    raw = sorted(SAMPLE.glob("*.jpg"))[0].read_bytes()
    item = httpclient.InferInput("image", [1], "BYTES")
    item.set_data_from_numpy(np.array([raw], dtype=np.object_))
    return [item]


def served_version(client: httpclient.InferenceServerClient) -> str:
    """The version that answers an inference on the model (no version named)."""
    return str(client.infer("tiny", image_request()).get_response()["model_version"])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_mint_serve_s3_hot_updates_from_the_bucket(
        bucket: Any, tiny_version: Path, copy_version: Any, tmp_path: Path) -> None:
    publisher = S3Repository(bucket.uri, cache_dir=tmp_path / "publisher")
    publisher.publish("tiny", copy_version(tiny_version))
    port, metrics_port = _free_port(), _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelmint.cli", "serve", bucket.uri, "--http-port",
             str(port), "--grpc-port", "-1", "--metrics-port", str(metrics_port),
             "--poll", "0.5"],
            stderr=err)  # the environment points boto3 at the moto server
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        wait_for(lambda: proc.poll() is None and _ready(client, "1"), 60, "version 1")
        assert served_version(client) == "1"
        publisher.publish("tiny", copy_version(tiny_version))
        wait_for(lambda: _ready(client, "2"), 30, "the hot update to version 2")
        wait_for(lambda: served_version(client) == "2", 30, "version 2 to take the traffic")
        # Both versions' folders, complete, in the cache; nothing half-written left over.
        cache = tmp_path / "cache" / "s3" / bucket.name / "repo" / "tiny"
        assert sorted(p.name for p in cache.iterdir()) == ["1", "2"]
        # What polling costs is on /metrics, by S3 operation.
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'modelmint_s3_requests_total{operation="ListObjectsV2"}' in metrics
        assert 'modelmint_s3_requests_total{operation="GetObject"}' in metrics
    finally:
        proc.terminate()
        proc.wait(30)
    assert "Traceback" not in log.read_text()


def test_a_missing_bucket_exits_2_naming_it(bucket: Any) -> None:
    from typer.testing import CliRunner

    from modelmint.cli import app

    done = CliRunner().invoke(app, ["serve", "s3://no-such-bucket/models", "--http-port", "0",
                                    "--grpc-port", "-1", "--metrics-port", "-1"])
    assert done.exit_code == 2, done.output
    assert "bucket 'no-such-bucket' does not exist" in " ".join(done.output.split())
    assert done.exception is None or isinstance(done.exception, SystemExit)


@pytest.fixture
def served_through_proxy(proxy_bucket: Any, tiny_version: Path, copy_version: Any,
                         tmp_path: Path) -> Any:
    """Version 1 served from the bucket through the throttling proxy, polled every 0.3 s."""
    bucket, proxy = proxy_bucket
    repo = S3Repository(bucket.uri, cache_dir=tmp_path / "server")
    repo.publish("tiny", copy_version(tiny_version))
    with full_server(repo, grpc_port=None) as (server, dataplane):  # type: ignore[arg-type]
        dataplane.start_polling(0.3)
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert served_version(client) == "1"
        yield bucket, proxy, repo, client, dataplane


def test_a_slow_download_keeps_the_serving_version(
        served_through_proxy: Any, tiny_version: Path, copy_version: Any,
        tmp_path: Path) -> None:
    bucket, proxy, repo, client, dataplane = served_through_proxy
    # Idle polls cost one LIST of the root and one of the model each, and no download.
    before, started = repo.requests, time.monotonic()
    time.sleep(1.5)
    polls = (time.monotonic() - started) / 0.3 + 1
    after = repo.requests
    assert 0 < after["ListObjectsV2"] - before["ListObjectsV2"] <= 2 * polls
    assert after.get("GetObject") == before.get("GetObject")
    proxy.rate = 100_000  # bytes/s: version 2 takes ~2 s to arrive
    publisher = S3Repository(bucket.uri, cache_dir=tmp_path / "publisher")
    publisher.publish("tiny", copy_version(tiny_version, padding=200_000))
    wait_for(lambda: any(repo.root.glob("tiny/.tmp-*")), 10, "the download to start")
    started = time.monotonic()
    index = {e["version"]: e for e in dataplane.lifecycle.index()}
    assert "being downloaded" in index["2"]["reason"]
    while any(repo.root.glob("tiny/.tmp-*")):  # every request meanwhile: version 1, at once
        began = time.monotonic()
        assert served_version(client) == "1"
        assert time.monotonic() - began < 2.0  # not held up by the download
    assert time.monotonic() - started > 1.0  # it was slow, and requests kept being served
    proxy.rate = None
    wait_for(lambda: served_version(client) == "2", 30, "version 2 after its download")


def test_a_partition_mid_download_keeps_serving_and_retries(
        served_through_proxy: Any, tiny_version: Path, copy_version: Any,
        spare_moto: Any, moto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket, proxy, repo, client, dataplane = served_through_proxy
    # The server's S3 becomes a server of its own (a copy of the bucket), killed mid-download.
    doomed = spare_moto
    _copy_bucket(bucket, moto[0].endpoint, doomed.endpoint)
    proxy.retarget(doomed.port, 100_000)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", doomed.endpoint)
    publisher = S3Repository(bucket.uri, cache_dir=tmp_path / "publisher")
    publisher.publish("tiny", copy_version(tiny_version, padding=200_000))
    wait_for(lambda: any(repo.root.glob("tiny/.tmp-*")), 10, "the download to start")
    _copy_bucket(bucket, doomed.endpoint, moto[0].endpoint)  # what the network gives back
    doomed.stop()
    wait_for(lambda: not any(repo.root.glob("tiny/.tmp-*")), 10, "the download to fail")
    assert not (repo.root / "tiny" / "2").exists()
    for _ in range(5):  # polls against a dead server: the served version stays
        assert served_version(client) == "1"
        time.sleep(0.3)
    index = dataplane.lifecycle.index()
    assert [e["state"] for e in index if e["version"] == "1"] == ["READY"]
    assert any("cannot be reached" in e["reason"] for e in index)  # and says why
    proxy.retarget(moto[0].port, None)  # the network is back
    wait_for(lambda: served_version(client) == "2", 30, "version 2, retried")
    assert (repo.root / "tiny" / "2" / "padding.bin").stat().st_size == 200_000


def _copy_bucket(bucket: Any, source: str, dest: str) -> None:
    import boto3

    def client(endpoint: str) -> Any:
        return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    src, dst = client(source), client(dest)
    if not dst.list_buckets()["Buckets"]:
        dst.create_bucket(Bucket=bucket.name)
    for item in src.list_objects_v2(Bucket=bucket.name)["Contents"]:
        body = src.get_object(Bucket=bucket.name, Key=item["Key"])["Body"].read()
        dst.put_object(Bucket=bucket.name, Key=item["Key"], Body=body)


def _ready(client: httpclient.InferenceServerClient, version: str) -> bool:
    try:
        return bool(client.is_model_ready("tiny", version))
    except Exception:  # not listening yet
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
