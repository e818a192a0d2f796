"""The contract between the search driver and the per-task candidates (issue 6).

The driver (``search/driver.py``) owns the Optuna study, the budget, the leaderboard, resume and
distributed trials. A *candidate* owns one family of models for one task (``image``, ``audio``,
``text``): it suggests its own hyper-parameters from the Optuna trial, trains within the deadline,
reports intermediate validation scores (so the pruner can stop it) and returns a :class:`Fitted`
model that can be exported and published. The driver never imports torch, sklearn or a modality
library itself; candidates do, lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .._data.dataset import TaskData

if TYPE_CHECKING:
    import optuna

TASKS = ("image-classification", "audio-classification", "text-classification")


class Fitted(Protocol):
    """A trained model, ready to be evaluated, exported and published."""

    architecture: str  # e.g. "mobilenet_v2", "tf_efficientnet_lite0", "tfidf-char+logreg"
    preprocessing: dict[str, Any]  # the spec JSON recorded in modelmint.json (has "kind")
    params: dict[str, Any]  # the hyper-parameters it was trained with

    def val_probabilities(self) -> np.ndarray:
        """[len(data.val), classes] probabilities, in data.val order (for the report)."""
        ...

    def export(self, directory: Path) -> None:
        """Write ``model.onnx`` (input ``input``; outputs ``logits`` and ``probabilities``) and
        any weights into ``directory``; check the ONNX graph against the trained model."""
        ...

    def warmup_payloads(self) -> list[bytes]:
        """A few raw inputs (encoded image, WAV bytes, UTF-8 text) for ``warmup/``."""
        ...


class Candidate(Protocol):
    """One model family for one task; the driver runs it once per Optuna trial."""

    name: str  # unique and stable, e.g. "mobilenet_v2/frozen+linear", "logmel-stats+lr"
    task: str  # one of TASKS
    kind: str  # "baseline" (cheap, run first, fixed params) or "finetune" (searched)

    def estimate_seconds(self, data: TaskData) -> float:
        """A rough cost of one trial, so the driver can skip what cannot fit the time left."""
        ...

    def fit(self, data: TaskData, trial: optuna.Trial, deadline: float,
            workdir: Path) -> Fitted:
        """Suggest parameters from ``trial``; train until done or ``deadline``
        (``time.monotonic()``); after each epoch ``trial.report(val_accuracy, epoch)`` and
        ``raise optuna.TrialPruned()`` when ``trial.should_prune()``. ``workdir`` is this trial's
        own folder in the run directory (caches, checkpoints)."""
        ...
