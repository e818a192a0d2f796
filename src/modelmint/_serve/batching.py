"""Dynamic batching for one model: requests that arrive while the model is busy run together.

The rule (chosen so batching never adds latency at low load; on this CPU a batch of 8 is only
~1.2x more efficient per image than batch 1, so batching pays only for GPUs and bursts):

* **One execution at a time per instance.** An executor already uses every core for one batch;
  running two batches on it at once would only make both slower. A version with N instances
  (worker processes, see :mod:`.instances`) runs up to N executions at once, each formed by the
  rules below as if it were alone (a "lane" per instance).
* **An idle model runs a request at once.** When nothing is executing, a request starts in the
  same event-loop turn, whatever ``max_queue_delay_us`` says: waiting could only add latency,
  since nothing else is queued to join it (requests arriving in that same turn, e.g. a burst
  gathered together, do join).
* **Requests that arrive while an execution runs queue.** When it finishes, the next batch is
  formed from the queue in FIFO order: whole requests while they fit ``max_batch_size``; a
  request larger than ``max_batch_size`` is split across executions (it tops up a batch with as
  many of its rows as fit, then continues in the next). With ``preferred_batch_sizes``, the
  longest FIFO prefix whose row count is a preferred size is taken (the rest runs next), else
  the longest prefix that fits.
* **``max_queue_delay_us`` only applies to requests that already had to queue**: after an
  execution, if fewer rows are queued than the smallest preferred size (or ``max_batch_size``
  without preferred sizes), the batcher waits for more until the *oldest* queued request has
  been queued for ``max_queue_delay_us`` (Triton measures from the oldest request too), so under
  load the delay has usually already passed and nothing waits.

Every output an execution returns is split back per request along its first axis, which must
be the batch axis (a detector's ``[N, K, 4]`` boxes split fine: only the first axis is cut).

Bounds: at most ``max_queue_size`` requests wait (beyond: :class:`ServerBusy` with a drain-time
estimate for ``Retry-After``); a request's timeout expiring before its first rows start executing
gives :class:`DeadlineExceeded` (one already executing is never cancelled). Everything runs on
the event loop thread, so the queue needs no lock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._repository.config import BatchingConfig
from ..errors import DeadlineExceeded, InvalidInput, ModelNotReady, RepositoryError, ServerBusy
from .types import Outputs

Timings = dict[str, float]
Result = tuple[Outputs, Timings]
TIMEOUT_PARAMETER = "timeout"  # Triton's request parameter name, in microseconds
_EWMA = 0.2  # weight of the newest execution time in the drain-time estimate


@dataclass(eq=False)
class _Pending:
    """One submitted request: its rows, how many went to executions, and its output pieces."""

    rows: np.ndarray
    future: asyncio.Future[Result]
    enqueued: float
    deadline: float | None
    sent: int = 0  # rows handed to executions (a large request spans several)
    pieces: list[Outputs] = field(default_factory=list)
    received: int = 0
    compute_s: float = 0.0
    batch_size: int = 0  # largest execution this request was part of

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def started(self) -> bool:
        return self.sent > 0


# One slice of a request inside an execution: (request, first row, row count).
_Part = tuple[_Pending, int, int]


class DynamicBatcher:
    """Batches the requests of one model version into executions of ``run``.

    Used from one event loop only (the server's: HTTP and gRPC share it); no locks needed.
    ``concurrency`` is how many executions may run at once (the version's instances).
    """

    def __init__(self, run: Callable[[np.ndarray], Awaitable[Outputs]],
                 config: BatchingConfig, name: str, concurrency: int = 1) -> None:
        self._run = run
        self.config = config
        self.name = name
        self.concurrency = concurrency
        self._queue: deque[_Pending] = deque()
        # The running executions: their parts and when each started.
        self._executing: list[tuple[list[_Part], float]] = []
        self._arrival = asyncio.Event()  # binds to the running loop on first use (3.10+)
        self._lanes: set[asyncio.Task[None]] = set()
        self._closing = False
        self._execution_s: float | None = None  # EWMA of one execution's wall time

    @property
    def queue_depth(self) -> int:
        """Requests waiting (a large request counts until its last rows start executing)."""
        return len(self._queue)

    async def submit(self, batch: np.ndarray, timeout_s: float | None = None) -> Result:
        """Run the rows of one request; returns its rows of every output, and timings (seconds,
        and the largest execution batch it joined). ``timeout_s`` bounds the wait before its
        execution starts; None means no timeout."""
        if self._closing:
            raise ModelNotReady(f"model {self.name!r} is being unloaded; retry on the new version")
        if batch.ndim == 0 or batch.shape[0] == 0:
            raise InvalidInput(f"model {self.name!r}: a request needs at least one row, got "
                               f"shape {list(batch.shape)}")
        if len(self._queue) >= self.config.max_queue_size:
            raise ServerBusy(f"model {self.name!r} has {len(self._queue)} requests queued (its "
                             f"max_queue_size); retry later", retry_after=self._drain_estimate())
        now = time.monotonic()
        item = _Pending(batch, asyncio.get_running_loop().create_future(), now,
                        None if timeout_s is None else now + timeout_s)
        self._queue.append(item)
        self._kick()
        try:
            if timeout_s is not None:
                await asyncio.wait((item.future,), timeout=timeout_s)
                if not item.future.done() and not item.started:
                    self._discard(item)
                    raise DeadlineExceeded(self._deadline_message(timeout_s))
            return await item.future
        except asyncio.CancelledError:
            # The client went away: free its queue slot; rows already executing still run, but
            # a cancelled future tells the worker to drop any remaining rows and the result.
            self._discard(item)
            item.future.cancel()
            raise

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, then return."""
        self._closing = True
        self._arrival.set()  # a lane waiting for more rows stops waiting: none will come
        lanes = [lane for lane in self._lanes if not lane.done()]
        if lanes:
            # Shielded: a caller cancelled while closing must not cancel the executions.
            await asyncio.shield(asyncio.gather(*lanes))
        self._fail_all(ModelNotReady(f"model {self.name!r} was unloaded"))  # only if it died

    # --- scheduling (event loop thread only) ---------------------------------------------

    def _kick(self) -> None:
        self._lanes = {lane for lane in self._lanes if not lane.done()}
        if len(self._lanes) < self.concurrency:
            # An idle instance: start now; requests submitted in this same loop turn join it.
            self._lanes.add(asyncio.get_running_loop().create_task(
                self._drain(), name=f"modelmint-batcher-{self.name}"))
        else:
            self._arrival.set()

    async def _drain(self) -> None:
        """One lane: run batches until the queue is empty, then exit (the next arrival starts
        anew)."""
        try:
            first = True
            while self._queue:
                if not first:
                    await self._gather_more()
                first = False
                parts = self._take()
                if parts:
                    await self._execute(parts)
        except BaseException:
            # A bug here (or the loop shutting down) must not leave submitters hanging.
            self._fail_all(ModelNotReady(f"model {self.name!r}: its batcher stopped"))
            raise

    async def _gather_more(self) -> None:
        """After an execution, wait for more rows only while the oldest queued request has
        waited less than max_queue_delay_us and fewer rows than worth running are queued."""
        delay = self.config.max_queue_delay_us / 1e6
        if delay <= 0:
            return
        preferred = self.config.preferred_batch_sizes
        target = min(preferred) if preferred else self.config.max_batch_size
        while not self._closing and self._queue and self._queued_rows() < target:
            remaining = self._queue[0].enqueued + delay - time.monotonic()
            if remaining <= 0:
                return
            self._arrival.clear()  # cleared before waiting: no arrival can be missed
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Part]:
        """Choose the next execution's rows (see the module docstring) and mark them sent."""
        self._expire(time.monotonic())
        limit = self.config.max_batch_size
        parts: list[_Part] = []
        totals: list[int] = []
        total = 0
        for item in self._queue:
            left = item.size - item.sent
            if total + left <= limit:
                count = left
            elif item.size > limit:
                count = limit - total  # split anyway: top this batch up with some of its rows
            else:
                break  # strict FIFO: a later, smaller request does not overtake this one
            parts.append((item, item.sent, count))
            total += count
            totals.append(total)
            if total == limit:
                break
        preferred = set(self.config.preferred_batch_sizes)
        for k in range(len(totals) - 1, -1, -1):
            if totals[k] in preferred:
                parts = parts[:k + 1]
                break
        for item, _, count in parts:
            item.sent += count
        while self._queue and self._queue[0].sent == self._queue[0].size:
            self._queue.popleft()
        return parts

    def _expire(self, now: float) -> None:
        """Drop requests that can no longer run: timed out before starting, or abandoned."""
        for item in list(self._queue):
            if item.future.done():
                self._queue.remove(item)
            elif not item.started and item.deadline is not None and item.deadline <= now:
                self._queue.remove(item)
                timeout = item.deadline - item.enqueued
                item.future.set_exception(DeadlineExceeded(self._deadline_message(timeout)))

    async def _execute(self, parts: list[_Part]) -> None:
        first = parts[0]
        if len(parts) == 1 and first[1] == 0 and first[2] == first[0].size:
            batch = first[0].rows  # a lone whole request: no copy
        else:
            batch = np.concatenate([item.rows[start:start + n] for item, start, n in parts])
        rows = int(batch.shape[0])
        started = time.monotonic()
        execution = (parts, started)
        self._executing.append(execution)
        try:
            outputs = await self._run(batch)
            self._check_rows(outputs, rows)
        except Exception as exc:  # every request in the failed execution gets the error
            self._finished_executing(execution)
            for item, _, _ in parts:
                self._discard(item)  # a split request's remaining rows must not run
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._finished_executing(execution)
        compute = time.monotonic() - started
        self._execution_s = compute if self._execution_s is None else (
            _EWMA * compute + (1 - _EWMA) * self._execution_s)
        offset = 0
        for item, _, n in parts:
            item.pieces.append({name: out[offset:offset + n] for name, out in outputs.items()})
            offset += n
            item.received += n
            item.compute_s += compute
            item.batch_size = max(item.batch_size, rows)
            if item.received == item.size and not item.future.done():
                self._finish(item)

    def _check_rows(self, outputs: Outputs, rows: int) -> None:
        """Every output must have one row per batch row: else splitting would mix requests."""
        if not isinstance(outputs, dict) or not outputs:
            raise RepositoryError(f"model {self.name!r}: execution returned {type(outputs)} "
                                  "instead of named outputs")
        for name, out in outputs.items():
            if not isinstance(out, np.ndarray) or out.ndim == 0 or out.shape[0] != rows:
                shape = list(out.shape) if isinstance(out, np.ndarray) else type(out)
                raise RepositoryError(f"model {self.name!r}: execution returned output "
                                      f"{name!r} of shape {shape} for a batch of {rows} rows "
                                      "(outputs must have the batch axis first)")

    def _finish(self, item: _Pending) -> None:
        if len(item.pieces) == 1:
            output = item.pieces[0]
        else:
            try:  # a request split across executions: join each output's pieces
                output = {name: np.concatenate([piece[name] for piece in item.pieces])
                          for name in item.pieces[0]}
            except ValueError as exc:  # a dynamic trailing axis differed between executions
                item.future.set_exception(RepositoryError(
                    f"model {self.name!r}: the executions of one split request returned "
                    f"outputs that cannot be joined ({exc})"))
                return
        total = time.monotonic() - item.enqueued
        # Queue time is everything but compute: for a split request that includes the time
        # between its executions.
        timings = {"queue_s": max(0.0, total - item.compute_s), "compute_s": item.compute_s,
                   "batch_size": float(item.batch_size)}
        item.future.set_result((output, timings))

    # --- internals -------------------------------------------------------------------------

    def _finished_executing(self, execution: tuple[list[_Part], float]) -> None:
        if execution in self._executing:  # unless _fail_all already dropped it
            self._executing.remove(execution)

    def _queued_rows(self) -> int:
        return sum(item.size - item.sent for item in self._queue)

    def _discard(self, item: _Pending) -> None:
        if item in self._queue:
            self._queue.remove(item)

    def _fail_all(self, error: Exception) -> None:
        running = [item for parts, _ in self._executing for item, _, _ in parts]
        pending = running + list(self._queue)
        self._executing = []
        self._queue.clear()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(error)

    def _drain_estimate(self) -> float:
        """Seconds until the queue has likely drained: the clients' Retry-After."""
        # Before any execution finished, the running one has taken at least this long; a
        # 0.1 s floor guess (the header rounds up to 1 s anyway) covers the very first.
        started = min((at for _, at in self._executing), default=None)
        running = 0.0 if started is None else time.monotonic() - started
        per_execution = max(running, 0.1 if self._execution_s is None else self._execution_s)
        rows_at_once = self.config.max_batch_size * self.concurrency
        executions = math.ceil(self._queued_rows() / rows_at_once) + 1
        return executions * per_execution

    def _deadline_message(self, timeout_s: float) -> str:
        return (f"model {self.name!r}: request timed out after {timeout_s * 1e6:.0f} µs waiting "
                f"in the queue ({len(self._queue)} requests queued)")


def request_timeout_s(parameters: dict[str, Any], config: BatchingConfig | None) -> float | None:
    """A request's timeout in seconds: the V2 request parameter ``timeout`` (microseconds, as in
    Triton), else the model's ``default_timeout_us``; 0 or neither means no timeout."""
    value = parameters.get(TIMEOUT_PARAMETER)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 0):
        raise InvalidInput(f"request parameter {TIMEOUT_PARAMETER!r} is {value!r}; expected an "
                           "integer number of microseconds >= 0")
    micros = value or (config.default_timeout_us if config is not None else 0)
    return micros / 1e6 if micros else None
