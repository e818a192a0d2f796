"""The worker process that owns one model version's ONNX Runtime session (child side).

Forked by :mod:`.forkserver` (NumPy and onnxruntime already imported), or, where something
must be set before exec (``LD_PRELOAD``), started as ``python -c BOOTSTRAP``; either way with
one end of a socketpair on fd ``argv[1]``. The worker is lowered to ``SCHED_IDLE`` before it
does anything (the bootstrap: before any import), so importing onnxruntime, creating the
session and warming up only ever use CPU the serving processes leave idle (session creation
holds the GIL and the CPU in long chunks: inside the serving process it stalled live requests
by up to ~140 ms on a 2-core box). When the parent says ``promote`` the worker raises every one
of its threads (ORT's pool threads inherited the idle policy) back to ``SCHED_OTHER`` and then
takes traffic.

Protocol (pickled tuples over a :class:`multiprocessing.connection.Connection`):

* child → parent, once: ``("ready", inputs, outputs)`` (name → (V2 datatype or None, shape),
  see :data:`.types.GraphTensors`) or ``("error", message)``
* parent → child: ``("run", id, slot, shape, payload)``: the FP32 ``input`` batch is in
  shared-memory ``slot`` (``payload`` None) or, when no slot was free or it is too big, in
  ``payload``
* child → parent: ``("ok", id, layout, payloads)`` with one ``(dtype, shape, offset)`` per output
  the worker was started with (argv), in that order: ``payloads`` None means every output was
  written back into the same slot at its byte offset (over the input, no longer needed);
  otherwise ``payloads`` holds each output's bytes (no slot, or they do not all fit in it).
  Or ``("err", id, message)``.
* the worker runs up to ``threads`` requests at once (one for a torch program), so answers
  may come back in another order than the requests: each names its ``id``
* parent → child: ``("promote",)`` → ``("promoted", ok)``; EOF or ``("stop",)``: exit

Every output must have the batch axis first: the dynamic batcher splits them along it.

This module must not import torch (nor anything heavier than NumPy and onnxruntime).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from .._onnx_check import check_external_data
from .._tensor_names import TENSOR_INPUT
from ..errors import RepositoryError
from .types import ONNX_DATATYPES, GraphTensors

# Output byte offsets in a slot are multiples of this: every dtype's alignment.
ALIGN = 8

# Run by ``python -c``: the policy is lowered before the first import, so even importing
# NumPy and onnxruntime happens at idle priority. The package is registered without running
# its ``__init__``: the public API there imports the repository, data and training code, which
# doubled a worker's start (and so the time a crashed worker's version waits for its restart).
# argv: fd, onnx, shm path, slots, slot bytes, threads, arena (0/1), idle (0/1), output names
# (a JSON list), torch-partitioned (0/1).
BOOTSTRAP = (
    "import os, sys\n"
    "if sys.argv[8] == '1':\n"
    "    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "from importlib.util import find_spec, module_from_spec\n"
    "sys.modules['modelmint'] = module_from_spec(find_spec('modelmint'))\n"
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


def _session(onnx: str, threads: int, arena: bool, torch: bool) -> Any:
    """``torch``: a partitioned version, a torch program with ONNX subgraphs (the caller
    reads it from the metadata: a worker must not import the repository and data code)."""
    if torch:
        from .torch_runner import TorchSession  # imports torch only when needed

        return TorchSession(Path(onnx).parent, threads)
    # Before onnxruntime opens the graph; here, in the worker that loads at idle priority,
    # rather than in the front end: walking the file is 2-6 ms of Python holding the GIL.
    check_external_data(Path(onnx))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = arena
    # Spinning intra-op threads burn the cores the front end needs between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def graph_tensors(args: list[Any]) -> GraphTensors:
    """A session's ``get_inputs()``/``get_outputs()`` as name -> (V2 datatype, shape)."""
    return {a.name: (ONNX_DATATYPES.get(str(getattr(a, "type", ""))), list(a.shape))
            for a in args}


def run_session(session: Any, names: list[str], batch: np.ndarray) -> list[np.ndarray]:
    """The named outputs for one FP32 ``input`` batch, as contiguous arrays."""
    results = session.run(names, {TENSOR_INPUT: batch})
    arrays = [np.ascontiguousarray(r) for r in results]
    for name, array in zip(names, arrays, strict=True):
        if array.dtype.kind not in "biuf":
            raise RepositoryError(f"output {name!r} is a {array.dtype} tensor; only numeric "
                                  "outputs are served")
    return arrays


def main(argv: list[str]) -> None:
    fd, onnx, shm_path, slots, slot_bytes, threads, arena, _idle, outputs, torch = argv[:10]
    conn = Connection(int(fd))
    size = int(slots) * int(slot_bytes)
    try:
        with open(shm_path, "r+b") as f:
            shared = mmap.mmap(f.fileno(), size) if size else None
    except OSError as exc:  # the parent gave up on us already (and removed it)
        conn.send(("error", f"cannot map the shared memory {shm_path} ({exc})"))
        return
    # Mapped on both sides now (the parent mapped it before starting us): the name is no
    # longer needed. Removed here, first thing, and not only by the parent once we answer: a
    # parent that dies (or is stopped) while we load would otherwise leave the slots in
    # /dev/shm, which is memory, until the next reboot.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(shm_path)
    try:
        session = _session(onnx, int(threads), arena == "1", torch == "1")
    except RepositoryError as exc:  # already says what is wrong (e.g. torch is missing)
        conn.send(("error", str(exc)))
        return
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        conn.send(("error", f"onnxruntime cannot load it ({exc})"))
        return
    conn.send(("ready", graph_tensors(session.get_inputs()),
               graph_tensors(session.get_outputs())))
    # A partitioned version's torch program runs one request at a time.
    concurrent = 1 if torch == "1" else max(1, int(threads))
    _serve(conn, session, json.loads(outputs), shared, int(slot_bytes), concurrent)
    # Straight out, without tearing the session down piece by piece: the kernel frees it all
    # at once anyway, and a stopping worker runs beside live requests (measured on MobileNetV2:
    # ~75 ms of CPU to stop, most of it destructors).
    sys.stderr.flush()
    os._exit(0)


def _serve(conn: Connection, session: Any, names: list[str], shared: mmap.mmap | None,
           slot_bytes: int, concurrent: int) -> None:
    """Answer ``run`` messages, up to ``concurrent`` of them at once (ONNX Runtime's ``run`` is
    thread-safe and releases the GIL): with one run at a time a 2-core machine reached 213
    MobileNetV2 requests/s, with two 260 (measured in-process, intra-op threads 2)."""
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    pool = ThreadPoolExecutor(concurrent, thread_name_prefix="run")
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent went away: nothing left to serve
            kind = message[0]
            if kind == "stop":
                return
            if kind == "promote":
                send(("promoted", _promote()))
                continue
            pool.submit(_answer, send, session, names, shared, slot_bytes, *message[1:])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _answer(send: Any, session: Any, names: list[str], shared: mmap.mmap | None,
            slot_bytes: int, request_id: int, slot: int | None, shape: list[int],
            payload: bytes | None) -> None:
    try:
        if payload is None:
            assert shared is not None and slot is not None
            count = int(np.prod(shape))
            batch = np.frombuffer(shared, np.float32, count, slot * slot_bytes)
            batch = batch.reshape(shape)
        else:
            batch = np.frombuffer(payload, np.float32).reshape(shape)
        arrays = run_session(session, names, batch)
    except Exception as exc:  # a failed run answers this request only
        send(("err", request_id, str(exc)))
        return
    layout, offset = [], 0
    for array in arrays:
        layout.append((array.dtype.str, list(array.shape), offset))
        offset += -(-array.nbytes // ALIGN) * ALIGN
    if payload is None and shared is not None and slot is not None and offset <= slot_bytes:
        base = slot * slot_bytes
        for array, (_, _, start) in zip(arrays, layout, strict=True):
            view = np.frombuffer(shared, np.uint8, array.nbytes, base + start)
            view[:] = array.reshape(-1).view(np.uint8)
        send(("ok", request_id, layout, None))
    else:
        send(("ok", request_id, layout, [array.tobytes() for array in arrays]))


if __name__ == "__main__":
    main(sys.argv[1:])
