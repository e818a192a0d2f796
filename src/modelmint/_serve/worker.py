"""The worker process that owns one model version's ONNX Runtime session (child side).

Started by :class:`.executors.ProcessExecutor` as ``python -c BOOTSTRAP`` with one end of a
socketpair on fd ``argv[1]``. The bootstrap lowers the process to ``SCHED_IDLE`` before any
import, so importing onnxruntime, creating the session and warming up only ever use CPU the
serving processes leave idle (session creation holds the GIL and the CPU in long chunks: inside
the serving process it stalled live requests by up to ~140 ms on a 2-core box). When the parent
says ``promote`` the worker raises every one of its threads (ORT's pool threads inherited the
idle policy) back to ``SCHED_OTHER`` and then takes traffic.

Protocol (pickled tuples over a :class:`multiprocessing.connection.Connection`):

* child → parent, once: ``("ready", inputs, outputs)`` (name → shape) or ``("error", message)``
* parent → child: ``("run", id, slot, shape, payload)``: the FP32 batch is in shared-memory
  ``slot`` (``payload`` None) or, when no slot was free or it is too big, in ``payload``
* child → parent: ``("ok", id, shape, payload)`` (probabilities written back over the input
  in the same slot, or in ``payload``) or ``("err", id, message)``
* parent → child: ``("promote",)`` → ``("promoted", ok)``; EOF or ``("stop",)``: exit

This module must not import torch (nor anything heavier than NumPy and onnxruntime).
"""

from __future__ import annotations

import mmap
import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RepositoryError

OUTPUT = "probabilities"
INPUT = "input"

# Run by ``python -c``: the policy is lowered before the first import, so even importing
# NumPy and onnxruntime happens at idle priority. argv: fd, onnx, shm path, slots, slot bytes,
# threads, arena (0/1), idle (0/1).
BOOTSTRAP = (
    "import os, sys\n"
    "if sys.argv[8] == '1':\n"
    "    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "from modelmint._serve.worker import main\n"
    "main(sys.argv[1:])\n"
)


def can_raise_priority() -> bool:
    """Leaving SCHED_IDLE for SCHED_OTHER needs CAP_SYS_NICE or RLIMIT_NICE >= 20 (Linux):
    without either a worker lowered to idle would stay starved forever, so we do not lower."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    if os.geteuid() == 0:
        return True
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return soft == resource.RLIM_INFINITY or soft >= 20


def _promote() -> bool:
    """SCHED_OTHER for every thread of this process (the policy is per thread on Linux)."""
    ok = True
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setscheduler(int(task.name), os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            ok = False
    return ok


def _session(onnx: str, threads: int, arena: bool) -> Any:
    from .torch_runner import TorchSession, needs_torch  # imports torch only when needed

    version_dir = Path(onnx).parent
    if needs_torch(version_dir):  # a partitioned version: a torch program with ONNX subgraphs
        return TorchSession(version_dir, threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = arena
    # Spinning intra-op threads burn the cores the front end needs between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def main(argv: list[str]) -> None:
    fd, onnx, shm_path, slots, slot_bytes, threads, arena = argv[:7]
    conn = Connection(int(fd))
    try:
        session = _session(onnx, int(threads), arena == "1")
        size = int(slots) * int(slot_bytes)
        with open(shm_path, "r+b") as f:
            shared = mmap.mmap(f.fileno(), size) if size else None
    except RepositoryError as exc:  # already says what is wrong (e.g. torch is missing)
        conn.send(("error", str(exc)))
        return
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        conn.send(("error", f"onnxruntime cannot load it ({exc})"))
        return
    inputs = {i.name: list(i.shape) for i in session.get_inputs()}
    outputs = {o.name: list(o.shape) for o in session.get_outputs()}
    conn.send(("ready", inputs, outputs))
    _serve(conn, session, shared, int(slot_bytes))


def _serve(conn: Connection, session: Any, shared: mmap.mmap | None, slot_bytes: int) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away: nothing left to serve
        kind = message[0]
        if kind == "stop":
            return
        if kind == "promote":
            conn.send(("promoted", _promote()))
            continue
        _, request_id, slot, shape, payload = message
        try:
            if payload is None:
                assert shared is not None
                count = int(np.prod(shape))
                batch = np.frombuffer(shared, np.float32, count, slot * slot_bytes)
                batch = batch.reshape(shape)
            else:
                batch = np.frombuffer(payload, np.float32).reshape(shape)
            probs = np.ascontiguousarray(session.run([OUTPUT], {INPUT: batch})[0], np.float32)
        except Exception as exc:  # a failed run answers this request only
            conn.send(("err", request_id, str(exc)))
            continue
        if payload is None and shared is not None and probs.nbytes <= slot_bytes:
            view = np.frombuffer(shared, np.float32, probs.size, slot * slot_bytes)
            view[:] = probs.ravel()
            conn.send(("ok", request_id, list(probs.shape), None))
        else:
            conn.send(("ok", request_id, list(probs.shape), probs.tobytes()))


if __name__ == "__main__":
    main(sys.argv[1:])
