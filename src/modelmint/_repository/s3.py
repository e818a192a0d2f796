"""S3 access for an ``s3://bucket/prefix`` model repository: the location, one boto3 client
(endpoint, region and credentials from boto3's default chain, ``AWS_ENDPOINT_URL_S3`` included),
a count of every HTTP request it sends, and its failures turned into :class:`RepositoryError`
/ :class:`NotFound` messages that name the bucket and what to check.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import InvalidInput, NotFound, RepositoryError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

SCHEME = "s3://"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket naming rules
_CHUNK = 1024 * 1024
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AllAccessDisabled", "403", "Forbidden"}


def is_s3_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b": no leading or trailing "/"

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not is_s3_uri(uri):
            raise InvalidInput(f"repository {uri!r}: expected s3://BUCKET[/PREFIX]")
        bucket, _, prefix = uri[len(SCHEME):].partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET.fullmatch(bucket):
            raise InvalidInput(f"repository {uri!r}: {bucket!r} is not a bucket name (3-63 "
                               "lowercase letters, digits, '.' or '-')")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise InvalidInput(f"repository {uri!r}: the prefix must be made of non-empty "
                               "parts other than '.' and '..'")
        return cls(bucket, prefix)

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


_loader_lock = threading.Lock()
_loader: Any = None


def _session() -> Any:
    """A new boto3 session (credentials and endpoint read from the environment now) sharing
    one loader of the service descriptions: parsing them again costs ~0.3 s a client."""
    global _loader
    import boto3
    import botocore.session

    with _loader_lock:
        core = botocore.session.Session()
        if _loader is None:
            _loader = core.get_component("data_loader")
        core.register_component("data_loader", _loader)
        return boto3.session.Session(botocore_session=core)


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


class S3Client:
    """The calls the repository makes, each counted and with its failures translated."""

    def __init__(self, location: S3Location) -> None:
        from botocore.config import Config

        self.location = location
        # Timeouts bound a partition; retries follow the standard chain (AWS_MAX_ATTEMPTS...).
        self._client: Any = _session().client(
            "s3", config=Config(connect_timeout=5, read_timeout=30))
        self.requests: Counter[str] = Counter()  # HTTP requests sent, by operation
        self._count_lock = threading.Lock()
        self._client.meta.events.register("before-send.s3", self._count)

    def _count(self, event_name: str = "", **_: Any) -> None:
        with self._count_lock:
            self.requests[event_name.rsplit(".", 1)[-1]] += 1

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def list(self, prefix: str, delimiter: str | None = None
             ) -> tuple[dict[str, ObjectInfo], list[str]]:
        """Every object under ``prefix`` (key -> size and ETag) and, with a delimiter, the
        common prefixes; one request per 1000 keys."""
        objects: dict[str, ObjectInfo] = {}
        prefixes: list[str] = []
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        while True:
            page = self._call("list", prefix, self._client.list_objects_v2, **args)
            for item in page.get("Contents", []):
                objects[item["Key"]] = ObjectInfo(int(item["Size"]), str(item.get("ETag", "")))
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                return objects, prefixes
            args["ContinuationToken"] = page["NextContinuationToken"]

    def get_bytes(self, key: str) -> bytes:
        body = self._call("get", key, self._client.get_object,
                          Bucket=self.location.bucket, Key=key)["Body"]
        return b"".join(self._stream(body, key))

    def download(self, key: str, dest: Path) -> None:
        body = self._call("get", key, self._client.get_object,
                          Bucket=self.location.bucket, Key=key)["Body"]
        with dest.open("wb") as f:
            for chunk in self._stream(body, key):
                f.write(chunk)

    def put(self, key: str, body: bytes | Path, if_none_match: bool = False) -> bool:
        """Write an object; with ``if_none_match`` only if no object has that key (False when
        one has)."""
        extra = {"IfNoneMatch": "*"} if if_none_match else {}
        try:
            if isinstance(body, Path):
                with body.open("rb") as f:
                    self._call("put", key, self._client.put_object,
                               Bucket=self.location.bucket, Key=key, Body=f, **extra)
            else:
                self._call("put", key, self._client.put_object,
                           Bucket=self.location.bucket, Key=key, Body=body, **extra)
        except _PreconditionFailed:
            return False
        return True

    def _stream(self, body: Any, key: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        try:
            while chunk := body.read(_CHUNK):
                yield chunk
        except (BotoCoreError, HTTPError, OSError) as exc:
            raise RepositoryError(f"reading {self._where(key)} from {self.endpoint} failed: "
                                  f"{exc}") from None
        finally:
            body.close()

    def _where(self, key: str) -> str:
        return f"s3://{self.location.bucket}/{key}"

    def _call(self, what: str, key: str, fn: Any, **args: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**args)
        except NoCredentialsError:
            raise RepositoryError(
                f"no AWS credentials for {self.location.uri}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or another source boto3 reads") from None
        except ClientError as exc:
            self._client_error(exc, what, key)
        except BotoCoreError as exc:  # connection refused, timeouts, endpoint unreachable
            raise RepositoryError(f"S3 at {self.endpoint} cannot be reached for "
                                  f"{self.location.uri}: {exc}") from None

    def _client_error(self, exc: Any, what: str, key: str) -> NoReturn:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "PreconditionFailed" or status == 412:
            raise _PreconditionFailed() from None
        bucket = self.location.bucket
        if code == "NoSuchBucket":
            raise NotFound(f"bucket {bucket!r} does not exist at {self.endpoint} (model "
                           f"repository {self.location.uri})") from None
        if code in ("NoSuchKey", "404"):
            raise NotFound(f"{self._where(key)} does not exist") from None
        if code in _DENIED or status == 403:
            raise RepositoryError(
                f"S3 refused access to bucket {bucket!r} ({code or status}): check the AWS "
                "credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and their permissions") from None
        message = error.get("Message") or str(exc)
        raise RepositoryError(f"S3 {what} of {self._where(key)} failed: {code}: "
                              f"{message}") from None

    def collector(self) -> RequestCollector:
        return RequestCollector(self)


class _PreconditionFailed(Exception):
    """A conditional put lost: the key exists."""


class RequestCollector:
    """``modelmint_s3_requests_total{operation}`` for a Prometheus registry
    (``registry.register(repo.collector())``)."""

    def __init__(self, client: S3Client) -> None:
        self.client = client

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "modelmint_s3_requests", "HTTP requests sent to the S3 model repository.",
            labels=["operation"])
        with self.client._count_lock:
            counts = dict(self.client.requests)
        for operation, count in sorted(counts.items()):
            family.add_metric([operation], count)
        yield family
