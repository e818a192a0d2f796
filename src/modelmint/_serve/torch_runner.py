"""Serving a partitioned version: a ``torch.export`` program whose engine groups call ONNX
Runtime (the format of :mod:`.partitioned`), behind the same small interface as
an ONNX Runtime session (``get_inputs``, ``get_outputs``, ``run``), so the worker process and
the in-process executor use it unchanged.

Only versions whose ``modelmint.json`` says ``"runtime": "torch-partitioned"`` come here. This
module imports nothing heavy itself: torch is imported when such a version is loaded, so a
server without torch still serves every ONNX version and fails only these, with a clear
:class:`RepositoryError` (the version is FAILED; an older version keeps serving).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._repository import METADATA_FILE, ModelMetadata
from ..errors import RepositoryError

RUNTIME_FIELD = "runtime"
TORCH_PARTITIONED = "torch-partitioned"
PROGRAM_FILE = "model.pt2"  # here, not in .partitioned: that module imports torch
INPUT = "input"


def runtime_of(version_dir: Path) -> str:
    """The version's runtime: ``"onnxruntime"`` unless its metadata names another."""
    try:
        data = json.loads((version_dir / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return "onnxruntime"  # the ONNX loader reports a broken version in its own words
    runtime = data.get(RUNTIME_FIELD, "onnxruntime") if isinstance(data, dict) else None
    return str(runtime)


def needs_torch(version_dir: Path) -> bool:
    runtime = runtime_of(version_dir)
    if runtime not in ("onnxruntime", TORCH_PARTITIONED):
        raise RepositoryError(f"{version_dir / METADATA_FILE}: field {RUNTIME_FIELD!r} is "
                              f"{runtime!r}, expected 'onnxruntime' or {TORCH_PARTITIONED!r}")
    return runtime == TORCH_PARTITIONED


@dataclass
class _Tensor:
    """What the executors read from an ONNX Runtime ``NodeArg``."""

    name: str
    shape: list[Any]


class TorchSession:
    """The program of a partitioned version, answering like an ONNX Runtime session."""

    def __init__(self, version_dir: Path, threads: int) -> None:
        program = version_dir / PROGRAM_FILE
        try:
            import torch

            from . import partitioned
        except ImportError as exc:
            raise RepositoryError(
                f"{version_dir}: this version runs as {TORCH_PARTITIONED!r} (a torch.export "
                f"program calling ONNX subgraphs) and needs PyTorch, which this server cannot "
                f"import ({exc}); install torch beside modelmint or serve an ONNX version"
            ) from exc
        if not program.is_file():
            raise RepositoryError(f"{program}: missing (a {TORCH_PARTITIONED!r} version keeps "
                                  "its program there)")
        meta = ModelMetadata.load(version_dir)
        self.classes = len(meta.labels)
        self.crop = meta.image_spec().crop
        self.threads = threads
        self._torch = torch
        partitioned.threads = threads
        torch.set_num_threads(threads)
        try:
            self.module = partitioned.load_program(program)
        except Exception as exc:  # torch.export.load raises many untyped errors
            raise RepositoryError(f"{program}: torch.export cannot load it ({exc})") from exc
        # The executors just drop their session when a version is unloaded: free the ORT
        # sessions of its subgraphs with it (they are cached per process, by content).
        weakref.finalize(self, partitioned.release, partitioned.keys_in(self.module))

    def get_inputs(self) -> list[_Tensor]:
        return [_Tensor(INPUT, ["batch", 3, self.crop, self.crop])]

    def get_outputs(self) -> list[_Tensor]:
        return [_Tensor("logits", ["batch", self.classes]),
                _Tensor("probabilities", ["batch", self.classes])]

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        torch.set_num_threads(self.threads)  # per process, but cheap and a guard against others
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(np.ascontiguousarray(feeds[INPUT])))
        values = np.asarray(logits.numpy(), np.float32)
        shifted = np.exp(values - values.max(axis=1, keepdims=True))
        named = {"logits": values, "probabilities": shifted / shifted.sum(axis=1, keepdims=True)}
        return [named[name] for name in (outputs or ["logits", "probabilities"])]
