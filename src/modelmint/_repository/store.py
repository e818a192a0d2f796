"""The on-disk model repository: ``REPO/<model>/<version>/`` (Triton / TF Serving layout).

A version is written into a hidden temp dir and published with one ``rename`` so a reader
never sees half a version; a name collision (another publisher won the race) takes the next
number. Published versions are never rewritten.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput, NotFound
from .metadata import METADATA_FILE, ModelMetadata

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TEMP_PREFIX = ".tmp-"


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise InvalidInput(f"model name {name!r}: expected 1-64 letters, digits, '_', '-' or '.', "
                           "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class VersionRef:
    model: str
    version: int
    path: Path

    def metadata(self) -> ModelMetadata:
        return ModelMetadata.load(self.path)


class ModelRepository:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _MODEL_NAME.match(p.name) and self.versions(p.name))

    def versions(self, model: str) -> list[VersionRef]:
        model_dir = self.root / model
        if not model_dir.is_dir():
            return []
        refs = [VersionRef(model, int(p.name), p) for p in model_dir.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / METADATA_FILE).is_file()]
        return sorted(refs, key=lambda r: r.version)

    def version(self, model: str, version: int | None = None) -> VersionRef:
        refs = self.versions(model)
        if not refs:
            raise NotFound(f"model {model!r} has no versions in repository {self.root}")
        if version is None:
            return refs[-1]
        for ref in refs:
            if ref.version == version:
                return ref
        raise NotFound(f"model {model!r} has no version {version} "
                       f"(available: {[r.version for r in refs]})")

    def publish(self, model: str, write: Callable[[Path, int], None]) -> VersionRef:
        """Call ``write(tmp_dir, version)`` then atomically publish ``tmp_dir`` as the next version.

        If ``write`` raises (or the process dies), only a hidden ``.tmp-*`` dir remains.
        """
        check_model_name(model)
        model_dir = self.root / model
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            version = self._next_version(model_dir)
            write(tmp, version)
            while True:
                target = model_dir / str(version)
                try:
                    if target.exists():
                        raise FileExistsError(target)
                    os.rename(tmp, target)
                    break
                except OSError as exc:
                    if not isinstance(exc, FileExistsError) and exc.errno not in (
                            errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    version = max(version + 1, self._next_version(model_dir))
                    _restamp_version(tmp, version)
            _fsync_dir(model_dir)
            return VersionRef(model, version, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _next_version(model_dir: Path) -> int:
        numbers = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
        return max(numbers, default=0) + 1

    def stale_temp_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob(f"*/{TEMP_PREFIX}*"))


def _restamp_version(tmp: Path, version: int) -> None:
    """The metadata records its own version number; keep it true after a collision."""
    path = tmp / METADATA_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        data["version"] = version
        path.write_text(json.dumps(data, indent=2))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def require_repo_dir(path: str | Path) -> ModelRepository:
    repo = ModelRepository(path)
    if not repo.root.is_dir():
        raise NotFound(f"model repository {repo.root} does not exist")
    return repo
