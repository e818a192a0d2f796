"""The s3:// repository against a real S3 server (moto on loopback): publishing through a
manifest written last, concurrent publishers, half and corrupt uploads, the verified cache and
what a poll costs in requests."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from modelmint._repository import ModelMetadata, open_repository, require_repo_dir, resolve_version
from modelmint._repository.s3_repository import S3Repository
from modelmint.errors import InvalidInput, NotFound, RepositoryError


def write_files(files: dict[str, bytes]) -> Any:
    def write(tmp: Path, version: int) -> None:
        for name, body in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(body)
        (tmp / "modelmint.json").write_text(json.dumps({"name": "m", "version": version}))
    return write


def fresh(uri: str, cache: Path) -> S3Repository:
    """Another reader of the same bucket with a cache of its own (another replica)."""
    return S3Repository(uri, cache_dir=cache)


def test_publish_then_read_through_a_verified_cache(bucket: Any, tmp_path: Path) -> None:
    repo = open_repository(bucket.uri)
    assert isinstance(repo, S3Repository)
    first = repo.publish("m", write_files({"model.onnx": b"one", "warmup/r.json": b"{}"}))
    second = repo.publish("m", write_files({"model.onnx": b"two"}))
    assert (first.version, second.version) == (1, 2)

    reader = fresh(bucket.uri, tmp_path / "replica")
    refs, ignored = reader.scan("m")
    assert [r.version for r in refs] == [1, 2] and ignored == []
    assert refs[0].path == tmp_path / "replica" / "s3" / bucket.name / "repo" / "m" / "1"
    assert (refs[0].path / "model.onnx").read_bytes() == b"one"
    assert (refs[0].path / "warmup" / "r.json").read_bytes() == b"{}"
    assert json.loads((refs[1].path / "modelmint.json").read_text())["version"] == 2
    assert reader.models() == ["m"] and reader.version("m").version == 2
    # Nothing half-written is left in the cache, and the claim file is not downloaded.
    assert sorted(p.name for p in refs[0].path.parent.iterdir()) == ["1", "2"]
    assert not (refs[0].path / ".publisher").exists()


def test_a_poll_of_a_cached_model_costs_one_list(bucket: Any, tmp_path: Path) -> None:
    repo = open_repository(bucket.uri)
    repo.publish("m", write_files({"model.onnx": b"x" * 1000}))
    reader = S3Repository(bucket.uri, cache_dir=tmp_path / "replica", max_age_s=0.0)
    reader.scan("m")
    before = reader.requests
    reader.model_folders()
    reader.scan("m")
    after = reader.requests
    assert after["ListObjectsV2"] - before["ListObjectsV2"] == 2  # the root, the model
    assert after.get("GetObject", 0) == before.get("GetObject", 0)  # nothing downloaded again
    # Within max_age_s the listing is reused: the server's calls in one poll share it.
    cached = S3Repository(bucket.uri, cache_dir=tmp_path / "replica", max_age_s=60.0)
    for _ in range(3):
        cached.models(), cached.scan("m"), cached.versions("m")
    assert cached.requests == {"ListObjectsV2": 2}


def test_concurrent_publishers_never_share_a_number(bucket: Any, tmp_path: Path) -> None:
    published: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def publisher(i: int) -> None:
        repo = S3Repository(bucket.uri, cache_dir=tmp_path / f"publisher-{i}")
        try:
            for j in range(2):
                body = f"publisher {i} model {j}".encode()
                published.append((repo.publish("m", write_files({"model.onnx": body})).version,
                                  body))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(v for v, _ in published) == list(range(1, 9))
    refs, ignored = fresh(bucket.uri, tmp_path / "reader").scan("m")
    assert ignored == [] and [r.version for r in refs] == list(range(1, 9))
    for version, body in published:  # every version holds its own publisher's files
        assert (refs[version - 1].path / "model.onnx").read_bytes() == body


def test_a_claimed_number_is_skipped(bucket: Any) -> None:
    bucket.client().put_object(Bucket=bucket.name, Key="repo/m/1/.publisher", Body=b"{}")
    assert open_repository(bucket.uri).publish("m", write_files({"a": b"a"})).version == 2


def test_a_half_upload_is_invisible(bucket: Any, tmp_path: Path) -> None:
    s3 = bucket.client()
    s3.put_object(Bucket=bucket.name, Key="repo/m/1/model.onnx", Body=b"half")
    s3.put_object(Bucket=bucket.name, Key="repo/m/1/modelmint.json", Body=b"{}")
    reader = fresh(bucket.uri, tmp_path / "replica")
    refs, ignored = reader.scan("m")
    assert refs == [] and reader.models() == []
    assert [i.name for i in ignored] == ["1"]
    assert "no manifest.json" in ignored[0].reason and "upload in progress" in ignored[0].reason
    assert not (reader.root / "m" / "1").exists()
    with pytest.raises(NotFound, match=f"model 'm' has no versions in repository {bucket.uri}"):
        reader.version("m")


def _publish_then_break(bucket: Any, how: str) -> None:
    open_repository(bucket.uri).publish("m", write_files({"model.onnx": b"good bytes"}))
    s3 = bucket.client()
    key = "repo/m/1/model.onnx"
    if how == "missing":
        s3.delete_object(Bucket=bucket.name, Key=key)
    elif how == "size":
        s3.put_object(Bucket=bucket.name, Key=key, Body=b"longer bytes")
    elif how == "sha256":
        s3.put_object(Bucket=bucket.name, Key=key, Body=b"evil bytes")  # same size
    elif how == "escape":
        manifest = {"format": 1, "model": "m", "version": 1, "files": [
            {"path": "../2/model.onnx", "size": 3,
             "sha256": hashlib.sha256(b"bad").hexdigest()}]}
        s3.put_object(Bucket=bucket.name, Key="repo/m/1/manifest.json",
                      Body=json.dumps(manifest).encode())


@pytest.mark.parametrize(("how", "reason"), [
    ("missing", "model.onnx is in manifest.json but not in the bucket"),
    ("size", "model.onnx is 12 bytes in the bucket, 10 in manifest.json"),
    ("sha256", "model.onnx does not match manifest.json (downloaded 10 bytes"),
    ("escape", "path '../2/model.onnx' must be a relative path inside the version folder"),
])
def test_a_corrupt_version_is_refused_with_its_reason(bucket: Any, tmp_path: Path, how: str,
                                                      reason: str) -> None:
    _publish_then_break(bucket, how)
    reader = S3Repository(bucket.uri, cache_dir=tmp_path / "replica", max_age_s=0.0)
    refs, ignored = reader.scan("m")
    assert refs == [] and [i.name for i in ignored] == ["1"]
    assert reason in ignored[0].reason and "refused" in ignored[0].reason
    assert not (reader.root / "m" / "1").exists()
    assert not list((reader.root / "m").glob(".tmp-*"))
    assert not (reader.root / "2").exists()
    gets = reader.requests.get("GetObject", 0)
    assert reader.scan("m")[1] == ignored  # refused for good: not downloaded again
    assert reader.requests.get("GetObject", 0) == gets


def test_config_json_is_mirrored_into_the_cache(bucket: Any, tmp_path: Path) -> None:
    repo = open_repository(bucket.uri)
    repo.publish("m", write_files({"model.onnx": b"x"}))
    s3 = bucket.client()
    s3.put_object(Bucket=bucket.name, Key="repo/m/config.json", Body=b'{"instances": 2}')
    reader = S3Repository(bucket.uri, cache_dir=tmp_path / "replica", max_age_s=0.0)
    reader.scan("m")
    assert (reader.root / "m" / "config.json").read_bytes() == b'{"instances": 2}'
    s3.delete_object(Bucket=bucket.name, Key="repo/m/config.json")
    reader.scan("m")
    assert not (reader.root / "m" / "config.json").exists()


def test_wrong_credentials_are_refused_naming_the_bucket(
        authenticated_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = authenticated_bucket
    require_repo_dir(bucket.uri)  # the right key is accepted
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(RepositoryError, match=f"S3 refused access to bucket '{bucket.name}'"):
        require_repo_dir(bucket.uri)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEY")
    with pytest.raises(RepositoryError, match="check the AWS credentials"):
        open_repository(bucket.uri).publish("m", write_files({"a": b"a"}))


def test_a_missing_bucket_is_named(bucket: Any) -> None:
    with pytest.raises(NotFound, match="bucket 'no-such-bucket' does not exist"):
        require_repo_dir("s3://no-such-bucket/models")


@pytest.mark.parametrize(("uri", "expected"), [
    ("s3://Models/x", "'Models' is not a bucket name"),
    ("s3://", "'' is not a bucket name"),
    ("s3://models/a/../b", "the prefix must be made of non-empty parts"),
])
def test_a_malformed_uri_says_what_is_expected(uri: str, expected: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(expected)):
        open_repository(uri)


def test_an_unreachable_endpoint_is_an_error_not_a_traceback(
        bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # discard: nothing listens
    with pytest.raises(RepositoryError, match="cannot be reached"):
        require_repo_dir(bucket.uri)


class _Exported:
    """What training hands to publishing: a model that writes its files, and warmup data."""

    def export(self, directory: Path) -> None:
        (directory / "model.onnx").write_bytes(b"graph")

    def warmup_payloads(self) -> list[Any]:
        return []


def test_training_publishes_to_the_bucket_and_optimize_finds_it(bucket: Any,
                                                                tmp_path: Path) -> None:
    from modelmint._data.preprocess import ImageSpec
    from modelmint._search.publish import publish_version

    meta = ModelMetadata(name="bees", labels=["a", "b"], architecture="tiny",
                         preprocessing=ImageSpec())
    ref = publish_version(bucket.uri, meta, _Exported(), {"accuracy": 1.0})
    assert ref.version == 1
    reader = fresh(bucket.uri, tmp_path / "replica")
    got = reader.version("bees", 1)
    assert got.metadata().version == 1 and got.metadata().name == "bees"
    assert json.loads((got.path / "report.json").read_text()) == {"accuracy": 1.0}
    for target in (f"{bucket.uri}/bees", f"{bucket.uri}/bees/1", f"{bucket.uri}/bees/1/"):
        repo, found = resolve_version(target)
        assert (repo.name, found.model, found.version) == (bucket.uri, "bees", 1)
    with pytest.raises(NotFound, match="has no version 7"):
        resolve_version(f"{bucket.uri}/bees/7")
