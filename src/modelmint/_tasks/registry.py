"""Which candidates exist for which task, and how a data path becomes a :class:`TaskData`.

Part A (images) and part B (audio, text) each register their candidates here; the search
driver only ever calls :func:`candidates_for` and :func:`load_task_data`. Modality modules are
imported lazily, so a missing optional library (torchaudio, sentence-transformers, ...) only
breaks the task that needs it.

The API below is stable (part B codes against it):

* ``register(factory)`` — ``factory()`` returns a list of :class:`Candidate`; called once, lazily;
* ``candidates_for(task)`` — the registered candidates of one task, baselines first;
* ``detect_task(path)`` — ``image-classification`` / ``audio-classification`` /
  ``text-classification``;
* ``load_task_data(path, *, seed, group_by, reject_dir, label_column, text_column)``.

Modality loaders have the signatures
``load_image_data(path, *, seed, group_by) -> TaskData`` (``modelmint._data.images``),
``load_audio_data(path, *, seed, group_by) -> TaskData`` (``modelmint._data.audio``) and
``load_text_data(path, *, seed, group_by, label_column, text_column) -> TaskData``
(``modelmint._data.text``). They split with :func:`modelmint._data.layout.split_items`, which
implements ``--group-by`` the same way for every task; ``--reject-dir`` is applied here, after
loading, by :func:`modelmint._data.layout.add_reject_class`, so it is task-independent too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from .._data.dataset import TaskData
from ..errors import DataError
from .contract import TASKS, Candidate

CandidateFactory = Callable[[], list[Candidate]]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset({".wav"})
TEXT_SUFFIXES = frozenset({".tsv", ".csv"})

# task -> "module:function" of its loader; modules are imported only when that task is used.
LOADERS = {
    "image-classification": "modelmint._data.images:load_image_data",
    "audio-classification": "modelmint._data.audio:load_audio_data",
    "text-classification": "modelmint._data.text:load_text_data",
}
# Modules whose import registers candidates (each calls ``register`` at import time).
CANDIDATE_MODULES = {
    "image-classification": ("modelmint._tasks.image.candidates",),
    "audio-classification": ("modelmint._tasks.audio.candidates",
                             "modelmint._tasks.audio.segments"),
    "text-classification": ("modelmint._tasks.text.candidates",),
}

_factories: list[CandidateFactory] = []
_candidates: list[Candidate] | None = None


def register(factory: CandidateFactory) -> CandidateFactory:
    """Add a candidate factory (usable as a decorator). Idempotent per factory."""
    global _candidates
    if factory not in _factories:
        _factories.append(factory)
        _candidates = None
    return factory


def _import_candidates(task: str) -> None:
    for module in CANDIDATE_MODULES.get(task, ()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only a missing *candidate module* is tolerated; a missing library inside it is not.
            if exc.name != module:
                raise


def candidates_for(task: str) -> list[Candidate]:
    """Every registered candidate for ``task``: baselines first, then fine-tuning families."""
    global _candidates
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    _import_candidates(task)
    if _candidates is None:
        _candidates = [c for factory in _factories for c in factory()]
    found = [c for c in _candidates if c.task == task]
    return sorted(found, key=lambda c: c.kind != "baseline")


def detect_task(path: str | Path) -> str:
    """A ``.tsv``/``.csv`` file is text; a folder is audio when most files are ``.wav``,
    image when most are images."""
    root = Path(path).expanduser()
    if root.is_file():
        if root.suffix.lower() in TEXT_SUFFIXES:
            return "text-classification"
        raise DataError(f"{root}: a data file must be .tsv or .csv (label and text columns); "
                        "for images or sound give a folder of class folders")
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder or file")
    images = audio = 0
    for file in root.rglob("*"):
        suffix = file.suffix.lower()
        images += suffix in IMAGE_SUFFIXES
        audio += suffix in AUDIO_SUFFIXES
    if not images and not audio:
        raise DataError(f"{root}: found no image ({', '.join(sorted(IMAGE_SUFFIXES))}) or .wav "
                        "files; expected root/<class>/* or root/{train,val}/<class>/*")
    return "audio-classification" if audio > images else "image-classification"


def _loader(task: str) -> Callable[..., TaskData]:
    module, _, name = LOADERS[task].partition(":")
    try:
        loaded: Callable[..., TaskData] = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        raise DataError(f"{task} is not available in this installation ({exc})") from exc
    return loaded


def load_task_data(path: str | Path, *, seed: int = 0, group_by: str | None = None,
                   reject_dir: str | Path | None = None, label_column: str | None = None,
                   text_column: str | None = None) -> TaskData:
    """Detect the task, load and split its data, then add the "other" class if asked."""
    from .._data.layout import add_reject_class

    task = detect_task(path)
    loader = _loader(task)
    if task == "text-classification":
        data = loader(path, seed=seed, group_by=group_by, label_column=label_column,
                      text_column=text_column)
    else:
        if label_column or text_column:
            raise DataError("--label-column/--text-column apply to a .tsv/.csv data file only")
        data = loader(path, seed=seed, group_by=group_by)
    if reject_dir is not None:
        if task == "text-classification":
            raise DataError("--reject-dir applies to image and sound folders; for text, add the "
                            "out-of-domain rows to the file with their own label")
        suffixes = IMAGE_SUFFIXES if task == "image-classification" else AUDIO_SUFFIXES
        add_reject_class(data, reject_dir, suffixes=suffixes, seed=seed, group_by=group_by)
    return data
