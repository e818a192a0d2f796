"""Text classification: a .tsv/.csv file of labelled texts; TF-IDF and MiniLM embeddings with
linear models."""

from __future__ import annotations

from pathlib import Path

from ..._data.dataset import TaskData
from ..._data.text import TASK as NAME
from ..._data.text import load_text_data
from ..classification import classification_task
from ..contract import Candidate, LoadOptions

TEXT_SUFFIXES = (".tsv", ".csv")


def _detect(path: Path) -> int:
    return 1 if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES else 0


def _load(path: Path, options: LoadOptions) -> TaskData:
    # Short rows and duplicate texts are always dropped here, so --strict has nothing more to
    # drop.
    return load_text_data(path, seed=options.seed, group_by=options.group_by,
                          label_column=options.label_column, text_column=options.text_column)


def _candidates() -> list[Candidate]:
    # torch, scikit-learn and MiniLM load here, when training, not when detecting the task.
    from .candidates import text_candidates

    return list(text_candidates())


# No --epochs plan: every text model here is a linear model fitted to convergence, not trained
# in epochs, so --epochs is refused with that reason.
TASK = classification_task(
    NAME, "a .tsv or .csv file with a label and a text column", detect=_detect, load=_load,
    candidates=_candidates, fixed_plan=None,
    options=frozenset({"group_by", "label_column", "text_column"}))
