"""The on-disk model repository: ``REPO/<model>/<version>/`` (Triton / TF Serving layout).

A version is written into a hidden temp dir and published with one ``rename`` so a reader
never sees half a version; a name collision (another publisher won the race) takes the next
number. Published versions are never rewritten.

Version folders are named by canonical ASCII integers (``1``, ``2``, ... never ``007``, ``²`` or
``٣``), so a number has exactly one folder name. Whatever else a folder holds is ignored, and
:meth:`ModelRepository.scan` says why, so the server can report it instead of tripping on it.
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

from ..errors import InvalidInput, NotFound, RepositoryError
from .config import CONFIG_FILE
from .metadata import METADATA_FILE, ModelMetadata

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VERSION_NAME = re.compile(r"[1-9][0-9]*")  # [0-9] is ASCII only; fullmatch: no "\n" either
TEMP_PREFIX = ".tmp-"
_VERSION_NAMES = "1, 2, 3, ...: ASCII digits without leading zeros"


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.fullmatch(name):
        raise InvalidInput(f"model name {name!r}: expected 1-64 letters, digits, '_', '-' or '.', "
                           "starting with a letter or digit")
    return name


def version_number(name: str) -> int | None:
    """The version a folder called ``name`` holds, or None when it is not a version name."""
    return int(name) if _VERSION_NAME.fullmatch(name) else None


@dataclass(frozen=True)
class VersionRef:
    model: str
    version: int
    path: Path

    def metadata(self) -> ModelMetadata:
        return ModelMetadata.load(self.path)


@dataclass(frozen=True)
class Ignored:
    """An entry of the repository that is not served: its name in its folder, and why."""

    name: str
    reason: str


class ModelRepository:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def name(self) -> str:
        """How messages name the repository (its folder; its s3:// URI for a bucket)."""
        return str(self.root)

    def check(self) -> None:
        """Raise NotFound unless the repository exists."""
        if not self.root.is_dir():
            raise NotFound(f"model repository {self.root} does not exist")

    def models(self) -> list[str]:
        """The model folders that hold at least one published version (an unreadable one
        holds none here; :meth:`scan` says why)."""
        return [name for name in self.model_folders()[0] if self._has_versions(name)]

    def _has_versions(self, model: str) -> bool:
        try:
            return bool(self.versions(model))
        except RepositoryError:
            return False

    def model_folders(self) -> tuple[list[str], list[Ignored]]:
        """Every folder named like a model (with versions or not), and the root's other
        entries with why each is ignored."""
        folders, ignored = [], []
        for entry in _entries(self.root, "the model repository"):
            if entry.name.startswith("."):
                continue  # hidden: editors' and publishers' temporary files
            if not _MODEL_NAME.fullmatch(entry.name):
                ignored.append(Ignored(entry.name, f"{entry.name!r} in the repository root is "
                                       "not a model folder: model names are 1-64 letters, "
                                       "digits, '_', '-' or '.', starting with a letter or "
                                       "digit"))
            elif not _is_dir(entry):
                ignored.append(Ignored(entry.name, f"{entry.name!r} in the repository root is "
                                       "a file, not a model folder"))
            else:
                folders.append(entry.name)
        return sorted(folders), sorted(ignored, key=lambda i: i.name)

    def versions(self, model: str) -> list[VersionRef]:
        return self.scan(model)[0]

    def scan(self, model: str) -> tuple[list[VersionRef], list[Ignored]]:
        """The model's published versions, and the other entries of its folder with why each
        is ignored (hidden entries, such as publishes in progress, and config.json aside)."""
        refs, ignored = [], []
        for entry in _entries(self.root / model, f"model folder {model!r}"):
            name = entry.name
            if name.startswith(".") or name == CONFIG_FILE:
                continue
            number = version_number(name)
            where = f"{model}/{name}"
            if number is None:
                ignored.append(Ignored(name, f"{where!r} is not a version folder: version "
                                       f"folders are named {_VERSION_NAMES}"))
            elif not _is_dir(entry):
                ignored.append(Ignored(name, f"{where!r} is a file, not a version folder"))
            elif not _is_file(Path(entry.path) / METADATA_FILE):
                ignored.append(Ignored(name, f"{where!r} has no {METADATA_FILE}: not a "
                                       "published version (an incomplete copy?)"))
            else:
                refs.append(VersionRef(model, number, Path(entry.path)))
        return (sorted(refs, key=lambda r: r.version),
                sorted(ignored, key=lambda i: i.name))

    def version(self, model: str, version: int | None = None) -> VersionRef:
        refs = self.versions(model)
        if not refs:
            raise NotFound(f"model {model!r} has no versions in repository {self.name}")
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
        """One past every number in use, published or not: a number is never reused."""
        numbers = (version_number(p.name) for p in model_dir.iterdir())
        return max((n for n in numbers if n is not None), default=0) + 1

    def stale_temp_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob(f"*/{TEMP_PREFIX}*"))


def _entries(folder: Path, what: str) -> list[os.DirEntry[str]]:
    """The folder's entries; none when it is missing (it may be deleted while being read)."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise RepositoryError(f"{what} cannot be read: {exc.strerror or exc}") from None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks: a linked version folder is a folder
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # unreadable (permissions): not something that can be served
        return False


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


def open_repository(location: str | Path | ModelRepository) -> ModelRepository:
    """The repository at a folder or an ``s3://bucket/prefix`` URI (read through a local
    cache, see :mod:`.s3_repository`); a folder need not exist yet (publishing creates it)."""
    if isinstance(location, ModelRepository):
        return location
    if isinstance(location, str) and location.startswith("s3://"):
        from .s3_repository import S3Repository  # boto3 only for buckets

        return S3Repository(location)
    return ModelRepository(location)


def resolve_version(target: str | Path) -> tuple[ModelRepository, VersionRef]:
    """``REPO/<model>`` (its latest version) or ``REPO/<model>/<n>``, REPO a folder or an
    ``s3://bucket/prefix`` URI -> the repository and the version."""
    if isinstance(target, str) and target.startswith("s3://"):
        parts = target.rstrip("/").split("/")
        number = version_number(parts[-1])
        model = parts[-2] if number is not None else parts[-1]
        root = "/".join(parts[:-2] if number is not None else parts[:-1])
        if root.rstrip("/") == "s3:" or not _MODEL_NAME.fullmatch(model):
            raise NotFound(f"{target}: expected s3://BUCKET[/PREFIX]/<model>[/<version>]")
        repo = require_repo_dir(root)
        return repo, repo.version(model, number)
    p = Path(target).resolve()
    number = version_number(p.name)
    if (p / METADATA_FILE).is_file() and number is not None:
        repo = ModelRepository(p.parents[1])
        return repo, repo.version(p.parent.name, number)
    if p.is_dir():
        repo = ModelRepository(p.parent)
        return repo, repo.version(p.name)
    raise NotFound(f"{target}: not a model directory (REPO/<model>) or version directory")


def require_repo_dir(location: str | Path | ModelRepository) -> ModelRepository:
    """The repository at ``location``, which must exist: a folder, or a bucket that can be
    listed with the credentials at hand (NotFound / RepositoryError say what is wrong)."""
    repo = open_repository(location)
    repo.check()
    return repo
