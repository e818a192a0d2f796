"""Uploads: stream a request body to disk under a size limit, validate zips, file the items.

A zip is validated as a whole before anything is extracted (entry count, total uncompressed
size, compression ratio, no absolute paths, no ``..``, no symlinks, no encryption), so a bad
archive leaves nothing behind. Layout inside the zip (one common top folder is ignored):
``<class>/*`` and ``train|val/<class>/*`` become labels (and the split), files at the root or
under ``unlabeled/`` are unlabeled.
"""

from __future__ import annotations

import csv
import re
import stat
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from ..errors import InvalidInput, PayloadTooLarge
from .db import Item, Project
from .settings import AppSettings

SUFFIXES = {
    "image": frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}),
    "sound": frozenset({".wav", ".flac", ".ogg"}),
    "text": frozenset({".txt"}),
}
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "val"}
UNLABELED = "unlabeled"
TEXT_TABLES = frozenset({".tsv", ".csv"})  # text projects: one labelled text per row
_DRIVE = re.compile(r"^[A-Za-z]:")
_LABEL = re.compile(r"^[^/\\<>\x00-\x1f]{1,100}$")
RATIO_MIN_BYTES = 1024 * 1024  # tiny entries compress absurdly well without being bombs


@dataclass
class UploadResult:
    added: int = 0
    skipped: list[str] = field(default_factory=list)  # entries that are not data of this task
    labels: dict[str, int] = field(default_factory=dict)
    format: str | None = None  # detection: the annotation format read (voc, coco, yolo)
    findings: list[str] = field(default_factory=list)  # detection: what the reader found wrong

    def to_json(self) -> dict[str, object]:
        return {"added": self.added, "skipped": self.skipped[:50],
                "skipped_count": len(self.skipped), "labels": self.labels,
                "format": self.format, "findings": self.findings[:200],
                "findings_count": len(self.findings)}


async def receive(chunks: AsyncIterator[bytes], dest: Path, limit: int, name: str,
                  declared: int | None) -> int:
    """Write the body to ``dest`` chunk by chunk; 413 as soon as it passes ``limit``."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"upload {name!r}: {declared} bytes exceeds the limit of {limit} "
                              "bytes (mint app --upload-max-bytes)")
    size = 0
    try:
        with dest.open("wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"upload {name!r}: more than {limit} bytes; the limit "
                                          "is set by mint app --upload-max-bytes")
                fh.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return size


def check_label(label: str, where: str) -> str:
    label = label.strip()
    if not _LABEL.match(label) or label.startswith(".") or label == UNLABELED:
        raise InvalidInput(f"{where}: label {label!r} must be 1-100 characters, no slashes or "
                           f"control characters, not starting with '.' and not {UNLABELED!r}")
    return label


def validate_zip(zf: zipfile.ZipFile, name: str, archive_size: int,
                 settings: AppSettings) -> list[zipfile.ZipInfo]:
    """Every file entry, or InvalidInput naming the first entry that breaks a rule."""
    infos = zf.infolist()
    if len(infos) > settings.zip_max_entries:
        raise InvalidInput(f"upload {name!r}: {len(infos)} entries exceeds the limit of "
                           f"{settings.zip_max_entries} (mint app --zip-max-entries)")
    total = 0
    for info in infos:
        entry = info.filename
        parts = re.split(r"[/\\]", entry)
        if entry.startswith(("/", "\\")) or _DRIVE.match(entry):
            raise InvalidInput(f"upload {name!r}: entry {entry!r} is an absolute path")
        if ".." in parts:
            raise InvalidInput(f"upload {name!r}: entry {entry!r} contains '..' (path traversal)")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput(f"upload {name!r}: entry {entry!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise InvalidInput(f"upload {name!r}: entry {entry!r} is encrypted")
        if (info.file_size > RATIO_MIN_BYTES
                and info.file_size > settings.zip_max_ratio * max(info.compress_size, 1)):
            raise InvalidInput(f"upload {name!r}: entry {entry!r} expands {info.file_size} / "
                               f"{info.compress_size} bytes, above the ratio limit "
                               f"{settings.zip_max_ratio:g}:1 (zip bomb guard)")
        total += info.file_size
    if total > settings.zip_max_uncompressed:
        raise InvalidInput(f"upload {name!r}: {total} bytes uncompressed exceeds the limit of "
                           f"{settings.zip_max_uncompressed} (mint app --zip-max-uncompressed)")
    if total > RATIO_MIN_BYTES and total > settings.zip_max_ratio * max(archive_size, 1):
        raise InvalidInput(f"upload {name!r}: {total} bytes uncompressed from {archive_size} is "
                           f"above the ratio limit {settings.zip_max_ratio:g}:1 (zip bomb guard)")
    return [i for i in infos if not i.is_dir()]


def _visible(parts: tuple[str, ...]) -> bool:
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts)


def classify(parts: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(label, split) of an entry's path parts, after the common top folder is removed."""
    if len(parts) == 1 or parts[0] == UNLABELED:
        return None, None
    split = SPLIT_FOLDERS.get(parts[0].lower())
    if split is not None and len(parts) >= 3:
        return (None, None) if parts[1] == UNLABELED else (parts[1], split)
    return parts[0], None


def _strip_common_top(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """``bees/train/ants/x.jpg`` (a zipped folder) → ``train/ants/x.jpg``."""
    while (paths and all(len(p) >= 2 for p in paths) and any(len(p) >= 3 for p in paths)
           and len({p[0] for p in paths}) == 1
           and paths[0][0].lower() not in SPLIT_FOLDERS and paths[0][0] != UNLABELED):
        paths = [p[1:] for p in paths]
    return paths


def store_item(session: Session, project: Project, original: str, suffix: str,
               label: str | None, split: str | None, size: int, written: list[Path],
               files_dir: Path) -> tuple[Item, Path]:
    """Add the item's row; returns it and the path its file must be written to (recorded in
    ``written`` first, so a failed upload can remove exactly its own files)."""
    item = Item(project_id=project.id, original=original, suffix=suffix, label=label,
                split=split, size=size)
    session.add(item)
    session.flush()  # the id names the file
    written.append(files_dir / item.stored_name)
    return item, written[-1]


def ingest_zip(session: Session, project: Project, archive: Path, name: str,
               settings: AppSettings, files_dir: Path, written: list[Path]) -> UploadResult:
    result = UploadResult()
    suffixes = SUFFIXES[project.task]
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"upload {name!r}: not a valid zip file ({exc})") from None
    with zf:
        infos = [i for i in validate_zip(zf, name, archive.stat().st_size, settings)
                 if _visible(tuple(PurePosixPath(i.filename).parts))]
        paths = _strip_common_top([tuple(PurePosixPath(i.filename).parts) for i in infos])
        for info, parts in zip(infos, paths, strict=True):
            suffix = PurePosixPath(parts[-1]).suffix.lower()
            if suffix not in suffixes:
                result.skipped.append(info.filename)
                continue
            label, split = classify(parts)
            if label is not None:
                label = check_label(label, f"upload {name!r}: entry {info.filename!r}")
            _, dest = store_item(session, project, "/".join(parts), suffix, label, split,
                                 info.file_size, written, files_dir)
            try:
                with zf.open(info) as src, dest.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC error, truncated data
                raise InvalidInput(f"upload {name!r}: entry {info.filename!r} is corrupt "
                                   f"({exc})") from None
            result.added += 1
            key = label or UNLABELED
            result.labels[key] = result.labels.get(key, 0) + 1
    return result


def ingest_table(session: Session, project: Project, path: Path, name: str,
                 files_dir: Path, written: list[Path]) -> UploadResult:
    """A text project's ``.tsv``/``.csv``: a header, then one labelled text per row (label
    column first, text column last — e.g. ``Label<TAB>SMS``); each row becomes an item."""
    delimiter = "\t" if name.lower().endswith(".tsv") else ","
    result = UploadResult()
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh, delimiter=delimiter)
            header = next(rows, None)
            if header is None or len(header) < 2:
                raise InvalidInput(f"upload {name!r}: expected a header row with a label column "
                                   "first and a text column last")
            for n, row in enumerate(rows, start=2):
                if not row:
                    continue
                if len(row) < 2:
                    raise InvalidInput(f"upload {name!r}: row {n} has {len(row)} column(s); "
                                       "expected a label and a text")
                label = check_label(row[0], f"upload {name!r}: row {n}") if row[0].strip() \
                    else None
                text = row[-1].encode()
                _, dest = store_item(session, project, f"{PurePosixPath(name).name}:{n}",
                                     ".txt", label, None, len(text), written, files_dir)
                dest.write_bytes(text)
                result.added += 1
                key = label or UNLABELED
                result.labels[key] = result.labels.get(key, 0) + 1
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"upload {name!r}: not UTF-8 text ({exc})") from None
    return result


def ingest_file(session: Session, project: Project, path: Path, name: str, label: str | None,
                files_dir: Path, written: list[Path]) -> UploadResult:
    suffix = PurePosixPath(name).suffix.lower()
    if project.task == "text" and suffix in TEXT_TABLES:
        return ingest_table(session, project, path, name, files_dir, written)
    if suffix not in SUFFIXES[project.task]:
        also = sorted(SUFFIXES[project.task] | (TEXT_TABLES if project.task == "text" else set()))
        raise InvalidInput(f"upload {name!r}: a {project.task} project takes .zip or "
                           f"{', '.join(also)} files")
    if label is not None:
        label = check_label(label, f"upload {name!r}")
    _, dest = store_item(session, project, PurePosixPath(name).name, suffix, label, None,
                         path.stat().st_size, written, files_dir)
    path.rename(dest)
    return UploadResult(added=1, labels={label or UNLABELED: 1})
