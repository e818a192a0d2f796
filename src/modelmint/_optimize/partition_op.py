"""The operator that runs an ONNX subgraph inside a torch program: ``modelmint::onnx_subgraph``.

A partitioned program (see :mod:`.partition_compile`) is a ``torch.export`` program in which
every engine group was replaced by one call ``onnx_subgraph(key, onnx_bytes, inputs)``: the
serialized ONNX model travels as a uint8 constant of the program itself, so the saved ``.pt2``
file is the whole model and loading it needs this operator but not the model's Python source.
Importing this module registers the operator; :mod:`modelmint._serve.torch_runner` does so
before it loads a program.

One ONNX Runtime session per ``key`` (the SHA-256 of the bytes) is created on first use and
cached for the life of the process.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

NAMESPACE = "modelmint"
OP_NAME = f"{NAMESPACE}::onnx_subgraph"

_sessions: dict[str, Any] = {}
_lock = threading.Lock()
# key → a function computing the outputs' shapes on fake tensors: the group's original torch
# code, known only while the program is being built (torch.export traces the op on fake
# tensors then). A loaded program never traces, so it never needs this.
_shape_functions: dict[str, Callable[..., Any]] = {}
threads = os.cpu_count() or 1


def key_of(onnx_bytes: bytes) -> str:
    return hashlib.sha256(onnx_bytes).hexdigest()[:32]


def register_shape_function(key: str, fn: Callable[..., Any]) -> None:
    _shape_functions[key] = fn


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


@onnx_subgraph.register_fake
def _(key: str, model: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    fn = _shape_functions.get(key)
    if fn is None:
        raise RuntimeError(f"{OP_NAME}: no shape function for subgraph {key}; a partitioned "
                           "program can be run and saved, not re-traced")
    out = fn(*inputs)
    return [t.clone() for t in (out if isinstance(out, (tuple, list)) else (out,))]
