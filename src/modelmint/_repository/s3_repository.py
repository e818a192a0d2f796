"""A model repository in S3-compatible object storage (``s3://bucket/prefix``), read through a
local cache so the rest of the product (and ONNX Runtime) sees local folders.

Layout in the bucket, as on disk: ``<prefix>/<model>/config.json`` and
``<prefix>/<model>/<version>/<files>``, plus ``<version>/manifest.json`` (every file with its
size and sha256) and ``<version>/.publisher`` (the claim on the number).

Publishing, as object stores have no rename:

1. claim the next free number by writing ``<version>/.publisher`` with ``If-None-Match: *``;
   a publisher that loses takes the next number. A number is never reused, and only its
   claimant ever writes under it, so two publishers never mix their files;
2. upload every file of the version;
3. write ``manifest.json`` (``If-None-Match: *`` again): this is what publishes the version.

A reader uses a version only through its manifest: a version without one (an upload in
progress, or abandoned) is invisible, one whose files do not match (missing, other size, other
sha256) is refused with its reason, reported like the local store's ignored entries.

Reading: each listing (one LIST of the root, one LIST per model, 1000 keys per request) is
reused for ``max_age_s``, so one poll of the server costs one LIST per model. A new version is
downloaded into a hidden folder of the cache, each file checked against the manifest, and
renamed into place: the cache holds only complete versions. A download that fails (network)
is retried with the next listing; a refused version is not downloaded again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import MintError, NotFound, RepositoryError
from .config import CONFIG_FILE
from .manifest import MANIFEST_FILE, Manifest, ManifestError, file_digest
from .s3 import ObjectInfo, RequestCollector, S3Client, S3Location
from .store import (
    _MODEL_NAME,
    TEMP_PREFIX,
    Ignored,
    ModelRepository,
    VersionRef,
    check_model_name,
    version_number,
)

log = logging.getLogger("modelmint._repository")

CLAIM_FILE = ".publisher"
CACHE_ENV = "MODELMINT_CACHE_DIR"
DEFAULT_MAX_AGE_S = 1.0


def default_cache_dir() -> Path:
    """``$MODELMINT_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelmint``, else
    ``~/.cache/modelmint``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "modelmint"


class _Refused(Exception):
    """The version's files do not match its manifest: it is never served."""


class S3Repository(ModelRepository):
    """``ModelRepository`` over ``s3://bucket/prefix``; ``root`` is the local cache folder."""

    def __init__(self, uri: str, cache_dir: Path | None = None,
                 max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        self.location = S3Location.parse(uri)
        cache = (cache_dir or default_cache_dir()) / "s3" / self.location.bucket
        super().__init__(cache / self.location.prefix if self.location.prefix else cache)
        self.s3 = S3Client(self.location)
        self.max_age_s = max_age_s
        self._lock = threading.Lock()  # guards the dicts below
        self._root_listing: tuple[float, list[str], list[str]] | None = None
        self._listings: dict[str, tuple[float, dict[str, ObjectInfo]]] = {}
        self._refused: dict[tuple[str, int, str], str] = {}  # (model, version, manifest ETag)
        self._failed: dict[tuple[str, int], tuple[float, str]] = {}  # by listing time
        self._config_etags: dict[str, str] = {}
        self._syncing: dict[str, threading.Lock] = {}

    @property
    def name(self) -> str:
        return self.location.uri

    @property
    def requests(self) -> dict[str, int]:
        """HTTP requests sent to S3 so far, by operation (ListObjectsV2, GetObject, ...)."""
        return dict(self.s3.requests)

    def collector(self) -> RequestCollector:
        return self.s3.collector()

    def check(self) -> None:
        """One LIST of the root: the bucket exists and the credentials are accepted."""
        self._root(fresh=True)

    # --- listings --------------------------------------------------------------------------

    def _root(self, fresh: bool = False) -> tuple[list[str], list[str]]:
        now = time.monotonic()
        with self._lock:
            cached = self._root_listing
        if cached is None or fresh or now - cached[0] >= self.max_age_s:
            base = self.location.key()
            objects, prefixes = self.s3.list(f"{base}/" if base else "", delimiter="/")
            names = [p[len(base) + 1 if base else 0:].rstrip("/") for p in prefixes]
            files = [k.rsplit("/", 1)[-1] for k in objects]
            cached = (now, names, files)
            with self._lock:
                self._root_listing = cached
        return cached[1], cached[2]

    def _objects(self, model: str, fresh: bool = False) -> tuple[float, dict[str, ObjectInfo]]:
        """The model's objects by key relative to its folder, and when they were listed."""
        now = time.monotonic()
        with self._lock:
            cached = self._listings.get(model)
        if cached is None or fresh or now - cached[0] >= self.max_age_s:
            base = self.location.key(model) + "/"
            objects, _ = self.s3.list(base)
            cached = (now, {k[len(base):]: v for k, v in objects.items()})
            with self._lock:
                self._listings[model] = cached
        return cached

    # --- reading ---------------------------------------------------------------------------

    def model_folders(self) -> tuple[list[str], list[Ignored]]:
        names, files = self._root()
        folders, ignored = [], []
        for name in names:
            if name.startswith("."):
                continue
            if _MODEL_NAME.fullmatch(name):
                folders.append(name)
            else:
                ignored.append(Ignored(name, f"{name!r} in {self.name} is not a model folder: "
                                       "model names are 1-64 letters, digits, '_', '-' or '.', "
                                       "starting with a letter or digit"))
        ignored.extend(Ignored(f, f"{f!r} in {self.name} is a file, not a model folder")
                       for f in files if not f.startswith("."))
        return sorted(folders), sorted(ignored, key=lambda i: i.name)

    def models(self) -> list[str]:
        """Models with at least one manifest, read from the listing alone (no download)."""
        out = []
        for model in self.model_folders()[0]:
            try:
                objects = self._objects(model)[1]
            except RepositoryError:
                continue
            if any(k.endswith("/" + MANIFEST_FILE) and k.count("/") == 1 for k in objects):
                out.append(model)
        return out

    def scan(self, model: str) -> tuple[list[VersionRef], list[Ignored]]:
        """The model's published versions, each downloaded into the cache (verified) if it is
        not there yet, and the entries that are not served with why."""
        if not _MODEL_NAME.fullmatch(model):
            return [], []
        listed, objects = self._objects(model)
        self._sync_config(model, objects)
        by_version: dict[str, dict[str, ObjectInfo]] = {}
        for key, info in objects.items():
            folder, sep, rest = key.partition("/")
            if sep:
                by_version.setdefault(folder, {})[rest] = info
        refs, ignored = [], []
        sync = self._syncing.setdefault(model, threading.Lock())
        syncing = sync.acquire(blocking=False)  # another thread downloading: report, not wait
        try:
            for name, files in sorted(by_version.items()):
                number = version_number(name)
                where = f"{model}/{name}"
                if name.startswith("."):
                    continue
                if number is None:
                    ignored.append(Ignored(name, f"{where!r} is not a version folder: version "
                                           "folders are named 1, 2, 3, ..."))
                elif MANIFEST_FILE not in files:
                    ignored.append(Ignored(name, f"{where!r} has no {MANIFEST_FILE}: not "
                                           "published (an upload in progress or abandoned)"))
                else:
                    ref, reason = self._cached(model, number, files, listed, syncing)
                    if ref is not None:
                        refs.append(ref)
                    else:
                        ignored.append(Ignored(name, f"{where!r}: {reason}"))
        finally:
            if syncing:
                sync.release()
        return (sorted(refs, key=lambda r: r.version),
                sorted(ignored, key=lambda i: i.name))

    def _cached(self, model: str, number: int, files: dict[str, ObjectInfo], listed: float,
                may_download: bool) -> tuple[VersionRef | None, str]:
        target = self.root / model / str(number)
        if (target / MANIFEST_FILE).is_file():
            return VersionRef(model, number, target), ""
        etag = files[MANIFEST_FILE].etag
        with self._lock:
            refused = self._refused.get((model, number, etag))
            failed = self._failed.get((model, number))
        if refused is not None:
            return None, f"refused: {refused}"
        if failed is not None and failed[0] == listed:
            return None, f"download failed, retried at the next poll: {failed[1]}"
        if not may_download:
            return None, "being downloaded into the cache"
        try:
            self._download(model, number, files, target)
        except _Refused as exc:
            with self._lock:
                self._refused[(model, number, etag)] = str(exc)
            log.error("%s: %s/%s refused: %s", self.name, model, number, exc)
            return None, f"refused: {exc}"
        except MintError as exc:
            with self._lock:
                self._failed[(model, number)] = (listed, exc.message)
            log.warning("%s: downloading %s/%s failed, retried at the next poll: %s",
                        self.name, model, number, exc.message)
            return None, f"download failed, retried at the next poll: {exc.message}"
        with self._lock:
            self._failed.pop((model, number), None)
        log.info("%s: cached %s/%s in %s (S3 requests so far: %s)", self.name, model, number,
                 target, sum(self.s3.requests.values()))
        return VersionRef(model, number, target), ""

    def _download(self, model: str, number: int, files: dict[str, ObjectInfo],
                  target: Path) -> None:
        """Download a version into a hidden folder, check it against its manifest, and rename
        it into the cache (raises _Refused for a version that does not match its manifest)."""
        key = self.location.key(model, str(number))
        try:
            manifest = Manifest.decode(self.s3.get_bytes(f"{key}/{MANIFEST_FILE}"),
                                       f"s3://{self.location.bucket}/{key}/{MANIFEST_FILE}")
        except ManifestError as exc:
            raise _Refused(exc.message) from None
        if (manifest.model, manifest.version) != (model, number):
            raise _Refused(f"its {MANIFEST_FILE} is for {manifest.model!r} version "
                           f"{manifest.version}")
        for entry in manifest.files:
            info = files.get(entry.path)
            if info is None:
                raise _Refused(f"{entry.path} is in {MANIFEST_FILE} but not in the bucket")
            if info.size != entry.size:
                raise _Refused(f"{entry.path} is {info.size} bytes in the bucket, "
                               f"{entry.size} in {MANIFEST_FILE}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            for entry in manifest.files:
                dest = tmp / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download(f"{key}/{entry.path}", dest)
                size, digest = file_digest(dest)
                if (size, digest) != (entry.size, entry.sha256):
                    raise _Refused(f"{entry.path} does not match {MANIFEST_FILE} (downloaded "
                                   f"{size} bytes, sha256 {digest[:12]}..., expected "
                                   f"{entry.size} bytes, sha256 {entry.sha256[:12]}...)")
            (tmp / MANIFEST_FILE).write_bytes(manifest.encode())
            _move_into_place(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _sync_config(self, model: str, objects: dict[str, ObjectInfo]) -> None:
        """Mirror ``<model>/config.json`` into the cache when it changed (or is gone)."""
        local = self.root / model / CONFIG_FILE
        info = objects.get(CONFIG_FILE)
        if info is None:
            local.unlink(missing_ok=True)
            self._config_etags.pop(model, None)
            return
        if self._config_etags.get(model) == info.etag and local.is_file():
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        body = self.s3.get_bytes(self.location.key(model, CONFIG_FILE))
        tmp = local.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        tmp.write_bytes(body)
        os.replace(tmp, local)
        self._config_etags[model] = info.etag

    def version(self, model: str, version: int | None = None) -> VersionRef:
        try:
            return super().version(model, version)
        except NotFound as exc:
            raise NotFound(exc.message.replace(str(self.root), self.name)) from None

    # --- publishing ------------------------------------------------------------------------

    def publish(self, model: str, write: Callable[[Path, int], None]) -> VersionRef:
        """Claim the next number, ``write(tmp_dir, version)``, upload, then write the manifest
        (see the module docstring). If anything fails, the claimed number stays unpublished
        and invisible, and is never reused."""
        check_model_name(model)
        (self.root / model).mkdir(parents=True, exist_ok=True)
        tmp = self.root / model / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            version = self._claim(model)
            write(tmp, version)
            manifest = Manifest.of_folder(tmp, model, version)
            key = self.location.key(model, str(version))
            for entry in manifest.files:
                self.s3.put(f"{key}/{entry.path}", tmp / entry.path)
            if not self.s3.put(f"{key}/{MANIFEST_FILE}", manifest.encode(), if_none_match=True):
                raise RepositoryError(f"{self.name}/{model}/{version} was published by someone "
                                      f"else although this publisher claimed it ({CLAIM_FILE})")
            (tmp / MANIFEST_FILE).write_bytes(manifest.encode())
            target = self.root / model / str(version)
            _move_into_place(tmp, target)
            with self._lock:
                self._listings.pop(model, None)
                self._root_listing = None
            return VersionRef(model, version, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _claim(self, model: str) -> int:
        objects = self._objects(model, fresh=True)[1]
        numbers = (version_number(k.partition("/")[0]) for k in objects)
        version = max((n for n in numbers if n is not None), default=0) + 1
        claim = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "time": time.time()}).encode()
        while not self.s3.put(self.location.key(model, str(version), CLAIM_FILE), claim,
                              if_none_match=True):
            version += 1  # another publisher holds this number: never share one
        return version


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename a complete folder into the cache; one already there (another process cached
    the same version) is kept."""
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
