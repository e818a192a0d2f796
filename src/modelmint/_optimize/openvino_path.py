"""OpenVINO as a measured candidate: it reads the same FP32 ONNX graph ONNX Runtime runs.

Measured, not servable: the server's worker runs ONNX Runtime only, and the CPU wheel of
onnxruntime has no OpenVINO execution provider, so an OpenVINO winner is reported (with its
latency next to the others') while the fastest ONNX Runtime candidate is published; the report's
reason says so. OpenVINO is optional: without ``pip install openvino`` the candidate is skipped
with a note.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .measure import Candidate, Runner


def openvino_runner(onnx_path: str, threads: int | None = None) -> Runner:
    """A compiled FP32 CPU model with the latency hint (one stream, all cores), like our ORT
    sessions; raises ImportError without the package."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(onnx_path, "CPU", {
        "PERFORMANCE_HINT": "LATENCY",
        # On a CPU with AVX512_BF16 or AMX the plugin's default precision is bf16 (~1e-3
        # relative error): pin f32 so "openvino-fp32" is what it says and compares fairly.
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1,
    })
    request = compiled.create_infer_request()
    output = compiled.output(0)  # "logits": the first graph output, as ort_runner returns

    def run(x: np.ndarray) -> Any:
        return request.infer({0: x})[output]
    return run


def openvino_candidates(onnx_path: str, notes: list[str]) -> list[Candidate]:
    try:
        run = openvino_runner(onnx_path)
    except ImportError:
        notes.append("openvino skipped: not installed (pip install openvino)")
        return []
    except Exception as exc:  # OpenVINO's own errors are untyped RuntimeErrors
        notes.append(f"openvino skipped: cannot compile the graph ({exc})")
        return []
    return [Candidate("openvino-fp32", "openvino", "fp32", run, None,
                      ["OpenVINO CPU plugin, latency hint; measured, not servable (the "
                       "server runs ONNX Runtime)"])]
