"""The partitioned-program format: a ``torch.export`` program whose engine groups are calls of
the operator ``modelmint::onnx_subgraph``, and how a server loads and runs one.

Each engine group of the program is one call ``onnx_subgraph(key, onnx_bytes, inputs)``: the
serialized ONNX model travels as a uint8 constant of the program itself, so the saved ``.pt2``
file is the whole model and loading it needs this operator but not the model's Python source.
Importing this module registers the operator (it imports torch: only
:class:`.torch_runner.TorchSession` and the compiler that writes programs import it).

One ONNX Runtime session per ``key`` (the SHA-256 of the bytes, :func:`key_of`) is created on
first use and cached for the life of the process; :func:`release` forgets them. The operator's
fake (shape) implementation belongs to the compiler, which alone traces programs: a loaded
program runs, it is never re-traced.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

NAMESPACE = "modelmint"
OP_NAME = f"{NAMESPACE}::onnx_subgraph"

_sessions: dict[str, Any] = {}
_lock = threading.Lock()
threads = os.cpu_count() or 1  # intra-op threads of each subgraph session made from now on


def key_of(onnx_bytes: bytes) -> str:
    """The key a program passes with a subgraph's bytes (its session's cache key)."""
    return hashlib.sha256(onnx_bytes).hexdigest()[:32]


def release(keys: list[str]) -> None:
    """Forget these subgraphs' sessions (a program using one again re-creates it)."""
    with _lock:
        for key in keys:
            _sessions.pop(key, None)


def keys_in(module: torch.nn.Module) -> list[str]:
    """The subgraph keys a loaded program calls."""
    graph = getattr(module, "graph", None)
    nodes = [] if graph is None else graph.nodes
    return [str(n.args[0]) for n in nodes
            if n.op == "call_function" and n.target is torch.ops.modelmint.onnx_subgraph.default]


def load_program(path: Path) -> torch.nn.Module:
    """The saved program (``torch.export.save``) as a callable module."""
    return torch.export.load(str(path)).module()


def _session(key: str, model: torch.Tensor) -> Any:
    with _lock:
        session = _sessions.get(key)
        if session is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            # As in the server's own sessions: spinning pool threads would steal the cores
            # that the torch half of the program needs between subgraphs.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(model.numpy().tobytes(), opts,
                                           providers=["CPUExecutionProvider"])
            _sessions[key] = session
    return session


@torch.library.custom_op(OP_NAME, mutates_args=())
def onnx_subgraph(key: str, model: torch.Tensor, inputs: list[torch.Tensor]
                  ) -> list[torch.Tensor]:
    session = _session(key, model)
    feeds = {i.name: np.ascontiguousarray(t.detach().numpy())
             for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(np.asarray(o)) for o in session.run(None, feeds)]
