"""Sound classification: a folder of class folders of sound files; log-mel features with
linear baselines, a small CNN and a segment MLP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..._data.audio import AUDIO_SUFFIXES, load_audio_data
from ..._data.audio import TASK as NAME
from ..._data.dataset import TaskData
from ..classification import classification_task, count_files, with_reject_class
from ..contract import Candidate, LoadOptions


def _fixed_plan(epochs: int) -> tuple[str, dict[str, Any]]:
    """``--epochs N``: the segment MLP with its default parameters, for N epochs."""
    from .segments import SegmentMLPCandidate

    mlp = SegmentMLPCandidate()
    return mlp.name, {**mlp.first_trial(), "mlp.epochs": epochs}


def _load(path: Path, options: LoadOptions) -> TaskData:
    # Undecodable and duplicate files are always skipped here, so --strict has nothing more
    # to drop.
    data = load_audio_data(path, seed=options.seed, group_by=options.group_by)
    return with_reject_class(data, options, frozenset(AUDIO_SUFFIXES))


def _candidates() -> list[Candidate]:
    # torch and scikit-learn load here, when training, not when detecting the task.
    from .candidates import audio_candidates
    from .segments import segment_candidates

    return [*audio_candidates(), *segment_candidates()]


TASK = classification_task(
    NAME, "a folder of class folders of sound files (root/<class>/*.wav)",
    detect=lambda root: count_files(root, AUDIO_SUFFIXES), load=_load,
    candidates=_candidates, fixed_plan=_fixed_plan,
    options=frozenset({"group_by", "reject_dir"}))
