"""A version's ``manifest.json`` in object storage: every file of the version with its size and
sha256. Written last, it is what publishes a version; a reader uses a version only through it
and checks every file it downloads against it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import RepositoryError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1024 * 1024


class ManifestError(RepositoryError):
    """A manifest that is not one: its version is refused, not retried."""


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative, "/"-separated, never leaving the version folder
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    model: str
    version: int
    files: tuple[ManifestEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "model": self.model, "version": self.version,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                          for f in self.files]}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode()

    @classmethod
    def of_folder(cls, folder: Path, model: str, version: int) -> Manifest:
        """The manifest of every regular file under ``folder``."""
        entries = []
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = file.relative_to(folder).as_posix()
            if rel == MANIFEST_FILE:
                continue
            size, digest = file_digest(file)
            entries.append(ManifestEntry(rel, size, digest))
        return cls(model, version, tuple(entries))

    @classmethod
    def decode(cls, raw: bytes, where: str) -> Manifest:
        """Parse a manifest, refusing anything that is not one (``where`` names it)."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{where}: expected a JSON object with \"format\": "
                                  f"{MANIFEST_FORMAT}")
        files = data.get("files")
        if not isinstance(files, list) or not files:
            raise ManifestError(f"{where}: \"files\" must be a non-empty list")
        entries, seen = [], set()
        for i, item in enumerate(files):
            entry = _entry(item, f"{where} files[{i}]")
            if entry.path in seen:
                raise ManifestError(f"{where} files[{i}]: {entry.path!r} is listed twice")
            seen.add(entry.path)
            entries.append(entry)
        model, version = data.get("model"), data.get("version")
        if not isinstance(model, str) or not isinstance(version, int):
            raise ManifestError(f"{where}: expected \"model\" (text) and \"version\" "
                                  "(integer)")
        return cls(model, version, tuple(entries))


def _entry(item: Any, where: str) -> ManifestEntry:
    if not isinstance(item, dict):
        raise ManifestError(f"{where}: expected an object with path, size and sha256")
    path, size, digest = item.get("path"), item.get("size"), item.get("sha256")
    if not isinstance(path, str) or not safe_relative(path) or path == MANIFEST_FILE:
        raise ManifestError(f"{where}: path {path!r} must be a relative path inside the "
                              "version folder")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: size {size!r} must be a non-negative integer")
    if (not isinstance(digest, str) or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)):
        raise ManifestError(f"{where}: sha256 {digest!r} must be 64 lowercase hex digits")
    return ManifestEntry(path, size, digest)


def safe_relative(path: str) -> bool:
    """True for a plain relative path: no root, no '..', no empty or hidden-temp parts, no
    backslashes (a manifest must never write outside the version's cache folder)."""
    if not path or "\\" in path or "\x00" in path:
        return False
    parts = PurePosixPath(path).parts
    return (not PurePosixPath(path).is_absolute()
            and all(p not in ("", ".", "..") for p in parts)
            and "/".join(parts) == path)


def file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 hex digest of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
