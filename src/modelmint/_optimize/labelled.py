"""The version's own labelled items as the FP32 ``input`` rows its graph takes, for the
classifier gate of ``mint optimize``.

The items are the split the version's provenance records (``data_root`` and ``split.train`` /
``split.val``, each entry ``[item, label name]``), preprocessed with the version's own spec, as
the server would: images decoded, resized and cropped; sound files turned into log-mels; texts
encoded by the :class:`~modelmint._data.text.TextSpec` (TF-IDF rows, or WordPiece token ids and
attention mask for MiniLM). One small reader per preprocessing kind, in :data:`ROW_READERS`; a
file that is gone or no longer decodes is left out, as training would have to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._data.audio import AudioSpec, preprocess_audio
from .._data.preprocess import preprocess
from .._data.text import TextEncoder, TextSpec, load_text_data
from .._repository import METADATA_FILE, ModelMetadata
from ..errors import AudioDecodeError, DataError, ImageDecodeError
from .select import LabelledImages

Item = tuple[str, str]  # (item id: a path under data_root, or a text's row id; label name)
# Rows of ``items`` in order; None where an item is gone or unreadable.
RowReader = Callable[[ModelMetadata, Path, Sequence[Item]], list[np.ndarray | None]]


def image_rows(meta: ModelMetadata, root: Path, items: Sequence[Item]
               ) -> list[np.ndarray | None]:
    spec = meta.image_spec()
    rows: list[np.ndarray | None] = []
    for rel, _ in items:
        file = root / rel
        try:
            rows.append(preprocess(file, spec) if file.is_file() else None)
        except ImageDecodeError:
            rows.append(None)
    return rows


def audio_rows(meta: ModelMetadata, root: Path, items: Sequence[Item]
               ) -> list[np.ndarray | None]:
    spec = meta.preprocessing
    assert isinstance(spec, AudioSpec)  # ROW_READERS is keyed by the spec's kind
    rows: list[np.ndarray | None] = []
    for rel, _ in items:
        file = root / rel  # reject-class items are absolute paths: root / abs is abs
        try:
            rows.append(preprocess_audio(file, spec) if file.is_file() else None)
        except AudioDecodeError:
            rows.append(None)
    return rows


def text_rows(meta: ModelMetadata, root: Path, items: Sequence[Item]
              ) -> list[np.ndarray | None]:
    """Text items are row ids (the line a row starts on) of the TSV/CSV file ``root``: the
    file is read again by the training loader, with the columns the provenance names if it
    records them, and a row is used only if it still carries its recorded label."""
    spec = meta.preprocessing
    assert isinstance(spec, TextSpec)
    columns = meta.provenance.get("columns") or {}
    data = load_text_data(root, label_column=_column(columns, "label"),
                          text_column=_column(columns, "text"))
    labels = {item: data.labels[y] for item, y in [*data.train, *data.val]}
    found = [rel for rel, _ in items if rel in data.texts]
    moved = sum(labels[rel] != label for rel, label in items if rel in labels)
    if found and moved * 2 > len(found):
        raise DataError(f"{root}: {moved} of the {len(found)} recorded rows found there carry "
                        "another label than the version recorded, so the file changed since "
                        "training or its label/text columns are not the ones guessed here; "
                        "the gate cannot check accuracy on it")
    encoder = TextEncoder(spec)
    return [encoder.encode(data.texts[rel])
            if rel in data.texts and labels[rel] == label
            and len(data.texts[rel]) <= spec.max_chars else None
            for rel, label in items]


def _column(columns: Any, key: str) -> str | None:
    value = columns.get(key) if isinstance(columns, dict) else None
    return None if value is None else str(value)


ROW_READERS: dict[str, RowReader] = {"image": image_rows, "audio": audio_rows,
                                     "text": text_rows}


def _items(value: Any, labels: list[str], where: str) -> list[Item]:
    """One recorded split part, checked: ``[[item, label name], ...]``; labels the version
    does not have are left out (a class dropped since)."""
    if not isinstance(value, list):
        raise DataError(f"{where} is {value!r:.80}; expected a list of [item, label] pairs")
    out = []
    for i, entry in enumerate(value):
        if not (isinstance(entry, list | tuple) and len(entry) == 2
                and isinstance(entry[0], str) and isinstance(entry[1], str)):
            raise DataError(f"{where}[{i}] is {entry!r:.80}; expected [item, label name]")
        if entry[1] in labels:
            out.append((entry[0], entry[1]))
    return out


def spaced(items: list[Item], limit: int | None) -> list[Item]:
    """At most ``limit`` items, evenly spaced: the recorded lists are grouped by class, and
    their first N would hold one class only."""
    if limit is None or len(items) <= limit:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, max(limit, 0)).round()]


def load_labelled(meta: ModelMetadata, limit: int | None = None,
                  version_dir: Path | None = None) -> LabelledImages | None:
    """The version's own split (provenance), preprocessed with its own spec; None when the
    provenance names no readable items. ``limit``: items per split part."""
    where = (version_dir / METADATA_FILE) if version_dir else f"model {meta.name!r}"
    kind = meta.preprocessing.kind
    reader = ROW_READERS.get(kind)
    if reader is None:
        raise DataError(f"{where}: preprocessing kind {kind!r}; the accuracy gate of a "
                        f"classifier reads its labelled items of kind "
                        f"{', '.join(ROW_READERS)} (a tensor-input version records no data)")
    root, split = meta.provenance.get("data_root"), meta.provenance.get("split") or {}
    if not root or not isinstance(split, dict):
        return None
    rows: list[np.ndarray] = []
    labels, is_val = [], []
    for part in ("train", "val"):
        items = spaced(_items(split.get(part) or [], meta.labels,
                              f"{where}: field 'provenance.split.{part}'"), limit)
        for (_, label), row in zip(items, reader(meta, Path(root), items), strict=True):
            if row is not None:
                rows.append(row)
                labels.append(meta.labels.index(label))
                is_val.append(part == "val")
    if not rows:
        return None
    return LabelledImages(np.stack(rows).astype(np.float32), np.asarray(labels),
                          np.asarray(is_val))
