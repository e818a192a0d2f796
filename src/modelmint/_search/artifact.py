"""A trial's best model on disk, without pickle: its exported version files plus JSON.

A trial that improves on its process's best is exported into ``trials/NNN/fitted/`` (the same
files a version gets, already checked against the trained model), with its parameters, its
validation predictions and its warm-up payloads. After a resume, or in the process that
publishes what another worker found, :class:`SavedFitted` stands in for the trained model:
publishing it copies those files. Nothing here unpickles, so a shared study database that
points at a crafted folder cannot run code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._tasks.contract import Fitted
from ..errors import RepositoryError

MODEL_DIR = "model"
INFO_FILE = "fitted.json"
PREDICTIONS_FILE = "val_predictions.npy"


def save_fitted(fitted: Fitted, folder: Path) -> Path:
    """Export ``fitted`` into ``folder`` (replacing an earlier best of the same trial)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / MODEL_DIR).mkdir(parents=True)
    fitted.export(tmp / MODEL_DIR)
    predictions = fitted.val_predictions()
    info: dict[str, Any] = {
        "architecture": fitted.architecture, "preprocessing": fitted.preprocessing,
        "params": json.loads(json.dumps(fitted.params, default=str)),
        "stop_reason": getattr(fitted, "stop_reason", ""),
        "provenance": getattr(fitted, "provenance", {}), "warmup": []}
    if isinstance(predictions, np.ndarray):
        np.save(tmp / PREDICTIONS_FILE, predictions, allow_pickle=False)
    else:
        info["val_predictions"] = predictions
    for i, payload in enumerate(fitted.warmup_payloads()):
        if isinstance(payload, bytes):
            (tmp / f"warmup-{i:03d}.bin").write_bytes(payload)
            info["warmup"].append(f"warmup-{i:03d}.bin")
        else:
            np.save(tmp / f"warmup-{i:03d}.npy", np.asarray(payload), allow_pickle=False)
            info["warmup"].append(f"warmup-{i:03d}.npy")
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


class SavedFitted:
    """A :class:`Fitted` read back from :func:`save_fitted`'s folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            info = json.loads((folder / INFO_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RepositoryError(f"{folder}: not a saved model ({exc})") from exc
        self.architecture: str = info["architecture"]
        self.preprocessing: dict[str, Any] = info["preprocessing"]
        self.params: dict[str, Any] = info["params"]
        self.stop_reason: str = info.get("stop_reason", "")
        self.provenance: dict[str, Any] = info.get("provenance", {})
        self._predictions = info.get("val_predictions")
        self._warmup: list[str] = info["warmup"]

    def val_predictions(self) -> Any:
        if self._predictions is not None:
            return self._predictions
        return np.load(self.folder / PREDICTIONS_FILE, allow_pickle=False)

    def export(self, directory: Path) -> None:
        for item in (self.folder / MODEL_DIR).iterdir():
            if item.is_dir():
                shutil.copytree(item, directory / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, directory / item.name)

    def warmup_payloads(self) -> list[Any]:
        return [(self.folder / name).read_bytes() if name.endswith(".bin")
                else np.load(self.folder / name, allow_pickle=False) for name in self._warmup]
