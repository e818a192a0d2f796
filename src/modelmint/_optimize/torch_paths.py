"""The torch candidates: the version's weights in eager mode after the fx passes, the same in
channels_last, and (opt-in) ``torch.compile``. They are measured to show what the ONNX graph is
up against; the ONNX server cannot run them, so a torch winner is reported, not published."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from .._repository import WEIGHTS_FILE, ModelMetadata
from .._train.backbone import BACKBONES, build
from .measure import Candidate, Runner
from .passes_fx import ChannelsLast, run_fx_passes


def load_classifier(version_dir: Path, meta: ModelMetadata) -> nn.Module | None:
    """The version's torch model, or None if its architecture or weights are unavailable."""
    info = BACKBONES.get(meta.architecture)
    weights = version_dir / WEIGHTS_FILE
    if info is None or not weights.is_file():
        return None
    model = build(info, len(meta.labels), pretrained=False)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def torch_runner(model: nn.Module, threads: int | None = None) -> Runner:
    """``threads`` is set on every call (torch's thread count is process-wide, and candidates
    are interleaved)."""
    count = threads or os.cpu_count() or 1

    def run(x: np.ndarray) -> np.ndarray:
        torch.set_num_threads(count)
        with torch.inference_mode():
            out: np.ndarray = model(torch.from_numpy(x)).numpy()
        return out
    return run


def torch_candidates(version_dir: Path, meta: ModelMetadata, include_compile: bool,
                     notes: list[str]) -> list[Candidate]:
    model = load_classifier(version_dir, meta)
    if model is None:
        notes.append(f"torch paths skipped: no {WEIGHTS_FILE} or unknown architecture "
                     f"{meta.architecture!r}")
        return []
    gm, records = run_fx_passes(model)
    fx_note = ", ".join(f"{r.name} {r.nodes_before}→{r.nodes_after}" for r in records)
    # One OpenMP thread is also tried: torch's OpenMP barriers stall whenever another process
    # holds one of the cores (on the loaded 2-core machine, MobileNetV2 b1 took 33 ms on one
    # thread and 250 ms on two), while ORT's non-spinning pool degrades gracefully.
    out = [Candidate("torch-eager", "torch", "fp32", torch_runner(gm), None,
                     [f"fx passes: {fx_note}"]),
           Candidate("torch-eager-1t", "torch", "fp32", torch_runner(gm, 1), None,
                     ["fx passes, one thread"]),
           Candidate("torch-channels-last", "torch", "fp32", torch_runner(ChannelsLast(gm)),
                     None, ["fx passes, NHWC weights and input"])]
    if include_compile:
        try:
            compiled: nn.Module = torch.compile(gm, dynamic=False)  # type: ignore[assignment]
            out.append(Candidate("torch-compile", "torch", "fp32", torch_runner(compiled), None,
                                 ["torch.compile (inductor), static shapes"]))
        except Exception as exc:  # inductor needs a C compiler; report instead of failing
            notes.append(f"torch.compile skipped: {exc}")
    return out
