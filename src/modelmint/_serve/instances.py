"""The instances of one served version (``instances`` in ``config.json``): N executors, requests
spread across them, and supervision, so that a dead worker is never an outage.

* **Spreading**: to the live instance with the fewest requests outstanding (ties in turn).
* **Detection**: a worker's death is seen at once by its executor's reader thread (EOF on its
  socket, see :mod:`.executors`), which tells the pool before failing the requests it held.
* **Retry**: a request in flight on the dead worker runs again, once, on a live instance (or
  the restarted one) when the version is stateless (running it twice has no other effect);
  else it fails with :class:`ModelNotReady` (503) and a ``retry_after`` estimate.
* **Hold**: while no instance is live but one is restarting, requests wait for it (at most
  ``HOLD_S``, at most ``MAX_HELD`` of them): a one-instance crash costs latency, not errors.
* **Restart**: at once, then with exponential back-off (``BACKOFF_BASE_S`` doubling up to
  ``BACKOFF_CAP_S``) while it keeps failing (a failed start, or a crash within ``STABLE_S``);
  after ``MAX_FAILURES`` in a row the instance stays down, and a version with no instance live
  or restarting is FAILED. At idle priority while another instance serves, else at normal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..errors import MintError, ModelNotReady
from .executors import Executor, WorkerGone, settle
from .types import Outputs

log = logging.getLogger("modelmint._serve")

READY, RESTARTING, FAILED = "READY", "RESTARTING", "FAILED"  # the lifecycle's state names
HOLD_S = 10.0
MAX_HELD = 64
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0
STABLE_S = 30.0
MAX_FAILURES = 5
DEFAULT_START_S = 2.0  # a restart's duration before one was measured (Retry-After estimate)
GAVE_UP = "its worker keeps failing"  # how a FAILED state's reason begins

# (idle, on_exit) -> an executor whose graph was checked; raises if it cannot start.
Spawn = Callable[[bool, Callable[[str], None]], Executor]
Warm = Callable[[Executor], int]  # replays warm-up requests on one executor; returns runs
OnState = Callable[[str, str], None]  # (READY | RESTARTING | FAILED, reason)


def backoff_s(failures: int) -> float:
    """Seconds before the next start after ``failures`` failures in a row (the first: none)."""
    if failures <= 1:
        return 0.0
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (failures - 2)))


@dataclass(eq=False)
class _Instance:
    index: int
    executor: Executor | None = None
    generation: int = 0  # bumped at each death: late news of an older worker is ignored
    live: bool = False  # takes requests
    restarting: bool = False
    outstanding: int = 0
    started_at: float = 0.0
    failures: int = 0  # in a row (see the module docstring)
    reason: str = ""


@dataclass(eq=False)
class _Request:
    batch: np.ndarray
    future: Future[Outputs] = field(default_factory=Future)
    retried: bool = False
    held_until: float = 0.0


class InstancePool:
    """``count`` instances of one version (see the module docstring).

    ``spawn(idle, on_exit)`` starts one executor; :meth:`start` starts them all and warms each
    with ``warm``; :meth:`run` has the interface of an executor's; ``on_state`` hears every
    change of the version's health once started (from supervision threads).
    """

    def __init__(self, what: str, count: int, spawn: Spawn, *, stateless: bool = True,
                 on_state: OnState | None = None) -> None:
        self.what = what
        self.stateless = stateless
        self._spawn = spawn
        self._on_state = on_state
        self._warm: Warm | None = None
        self._instances = [_Instance(i) for i in range(count)]
        self._starting: list[Executor] = []  # spawned by start(), not yet live
        self._lock = threading.Lock()
        self._report_lock = threading.Lock()  # states reach on_state in the order they arose
        self._held: deque[_Request] = deque()
        self._expirer: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = False
        self._turn = 0  # round robin among equally loaded instances
        self._start_s = DEFAULT_START_S
        self._next_start_at = 0.0
        self.crashes = 0  # worker deaths seen since start (tests, logs)

    @property
    def size(self) -> int:
        return len(self._instances)

    def pids(self) -> list[int]:
        """The live or starting workers' process ids (none for in-process executors)."""
        with self._lock:
            executors = [i.executor for i in self._instances if i.live] + self._starting
        return [pid for e in executors if isinstance(pid := getattr(e, "pid", None), int)]

    # --- start and stop --------------------------------------------------------------------

    def start(self, warm: Warm, on_warming: Callable[[], None] | None = None) -> int:
        """Start every instance (their processes start together), then warm each one; returns
        the warm-up runs of the last. Raises (with everything stopped) if any cannot start."""
        started = time.monotonic()
        spawned: list[Executor | BaseException | None] = [None] * self.size

        def spawn(inst: _Instance) -> None:
            try:
                spawned[inst.index] = self._spawn(True, partial(self._lost, inst, 0))
            except BaseException as exc:  # reported below, on the caller's thread
                spawned[inst.index] = exc

        threads = [threading.Thread(target=spawn, args=(i,), daemon=True)
                   for i in self._instances[1:]]
        for thread in threads:
            thread.start()
        spawn(self._instances[0])
        for thread in threads:
            thread.join()
        executors = [e for e in spawned if e is not None and not isinstance(e, BaseException)]
        with self._lock:
            self._starting = list(executors)
        try:
            for result in spawned:
                if isinstance(result, BaseException):
                    raise result
            if on_warming is not None:
                on_warming()
            runs = 0
            for executor in executors:
                runs = warm(executor)
                executor.promote()
        except BaseException:
            for executor in executors:
                executor.close()
            raise
        finally:
            with self._lock:
                self._starting = []
        now = time.monotonic()
        with self._lock:
            for inst, executor in zip(self._instances, executors, strict=True):
                inst.executor, inst.live, inst.started_at = executor, True, now
            self._warm, self._started = warm, True
            self._start_s = (now - started) / self.size
        return runs

    def close(self) -> None:
        """Stop every instance and any restart; requests still waiting fail."""
        with self._lock:
            self._stop.set()
            held = list(self._held)
            self._held.clear()
            executors = [i.executor for i in self._instances if i.executor is not None]
            for inst in self._instances:
                inst.executor, inst.live = None, False
        for request in held:
            settle(request.future, error=ModelNotReady(f"{self.what} was unloaded"))
        for executor in executors:
            executor.close()

    # --- requests --------------------------------------------------------------------------

    def run(self, batch: np.ndarray) -> Future[Outputs]:
        request = _Request(batch)
        self._dispatch(request)
        return request.future

    def _dispatch(self, request: _Request) -> None:
        if request.future.done():  # its caller gave up while it was held
            return
        with self._lock:
            inst = self._pick()
            if inst is None:
                refusal = self._hold(request)
                if refusal is None:
                    return
            else:
                inst.outstanding += 1
                executor, generation = inst.executor, inst.generation
        if inst is None:
            settle(request.future, error=refusal)
            return
        assert executor is not None
        try:
            inner = executor.run(request.batch)
        except WorkerGone as exc:  # died since it was picked; the request never reached it
            self._finished(request, inst, generation, exc, sent=False)
            return
        except BaseException as exc:
            self._finished(request, inst, generation, exc)
            return
        inner.add_done_callback(lambda done: self._finished(
            request, inst, generation, *_outcome(done)))

    def _pick(self) -> _Instance | None:
        """The live instance with the fewest outstanding requests (lock held)."""
        count = self.size
        live = [i for i in self._instances if i.live]
        if not live:
            return None
        best = min(live, key=lambda i: (i.outstanding, (i.index - self._turn) % count))
        self._turn = (best.index + 1) % count
        return best

    def _hold(self, request: _Request) -> ModelNotReady | None:
        """Keep ``request`` until an instance is back, or say why not (lock held)."""
        restarting = any(i.restarting for i in self._instances)
        if self._stop.is_set():
            return ModelNotReady(f"{self.what} was unloaded")
        if not restarting or len(self._held) >= MAX_HELD:
            return self._unavailable()
        request.held_until = time.monotonic() + HOLD_S
        self._held.append(request)
        if self._expirer is None:
            self._expirer = threading.Thread(target=self._expire_held, daemon=True,
                                             name="modelmint-hold")
            self._expirer.start()
        return None

    def _unavailable(self, cause: str = "") -> ModelNotReady:
        """A 503 with the time until an instance is likely back (lock held)."""
        reasons = [i.reason for i in self._instances if i.reason]
        why = cause.removeprefix(f"{self.what}: ") or (
            reasons[-1] if reasons else "no instance is running")
        wait = max(0.0, self._next_start_at - time.monotonic()) + self._start_s
        return ModelNotReady(f"{self.what} is not ready: {why}; retry in {wait:.0f} s",
                             retry_after=wait)

    def _finished(self, request: _Request, inst: _Instance, generation: int,
                  error: BaseException | None, result: Outputs | None = None,
                  sent: bool = True) -> None:
        with self._lock:
            inst.outstanding -= 1
        if error is None:
            settle(request.future, result)
        elif not isinstance(error, WorkerGone):
            settle(request.future, error=error)
        else:
            self._lost(inst, generation, str(error))  # usually known already, from on_exit
            if not sent or (self.stateless and not request.retried):
                request.retried = request.retried or sent
                self._dispatch(request)
            else:
                with self._lock:
                    refusal = self._unavailable(f"{error} (not retried: the model is stateful)"
                                                if not self.stateless else str(error))
                settle(request.future, error=refusal)

    def _expire_held(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                expired = []
                while self._held and self._held[0].held_until <= now:
                    expired.append(self._held.popleft())
                refusal = self._unavailable() if expired else None
                wait = self._held[0].held_until - now if self._held else None
                if wait is None:
                    self._expirer = None
            for request in expired:
                settle(request.future, error=refusal)
            if wait is None or self._stop.wait(wait):
                return

    # --- supervision -----------------------------------------------------------------------

    def _lost(self, inst: _Instance, generation: int, reason: str) -> None:
        """A live instance's worker died: stop routing to it and restart it."""
        with self._lock:
            if generation != inst.generation or not inst.live or self._stop.is_set():
                return
            inst.generation += 1
            inst.live, inst.restarting = False, True
            old, inst.executor = inst.executor, None
            if time.monotonic() - inst.started_at >= STABLE_S:
                inst.failures = 0
            inst.failures += 1
            inst.reason = reason.removeprefix(f"{self.what}: ")
            self.crashes += 1
        log.error("%s: instance %d of %d: %s; restarting it", self.what, inst.index + 1,
                  self.size, inst.reason)
        self.report()
        threading.Thread(target=self._restart, args=(inst, old), daemon=True,
                         name=f"modelmint-restart-{inst.index}").start()

    def _restart(self, inst: _Instance, old: Executor | None) -> None:
        if old is not None:
            old.close()  # reaps what is left of it: its socket, its shared memory
        while inst.failures <= MAX_FAILURES:
            delay = backoff_s(inst.failures)
            with self._lock:
                self._next_start_at = time.monotonic() + delay
            if self._stop.wait(delay):
                return
            with self._lock:
                idle = any(i.live for i in self._instances)
                generation = inst.generation
            started = time.monotonic()
            executor: Executor | None = None
            try:
                executor = self._spawn(idle, partial(self._lost, inst, generation))
                assert self._warm is not None
                self._warm(executor)
                executor.promote()
            except Exception as exc:
                if executor is not None:
                    executor.close()
                with self._lock:
                    inst.failures += 1
                    inst.reason = f"it could not be restarted: {_describe(exc)}"
                log.warning("%s: instance %d: %s", self.what, inst.index + 1, inst.reason)
                continue
            with self._lock:
                stopped = self._stop.is_set()
                if not stopped:
                    inst.executor, inst.live, inst.restarting = executor, True, False
                    inst.started_at = time.monotonic()
                    self._start_s = inst.started_at - started
                    held = list(self._held)
                    self._held.clear()
            if stopped:
                executor.close()
                return
            log.info("%s: instance %d restarted in %.2f s", self.what, inst.index + 1,
                     self._start_s)
            self.report()
            for request in held:
                self._dispatch(request)
            return
        self._give_up(inst)

    def _give_up(self, inst: _Instance) -> None:
        with self._lock:
            inst.restarting = False
            hopeless = not any(i.live or i.restarting for i in self._instances)
            held = list(self._held) if hopeless else []
            if hopeless:
                self._held.clear()
            refusal = self._unavailable()
        log.error("%s: instance %d failed %d times in a row; leaving it down (%s)", self.what,
                  inst.index + 1, inst.failures, inst.reason)
        for request in held:
            settle(request.future, error=refusal)
        self.report()

    def state(self) -> tuple[str, str]:
        """(READY | RESTARTING | FAILED, reason): READY while any instance is live."""
        with self._lock:
            live = sum(i.live for i in self._instances)
            down = [i for i in self._instances if not i.live]
            restarting = any(i.restarting for i in down)
            latest = down[-1].reason if down else ""
        if live:
            if not down:
                return READY, ""
            what = "restarting" if restarting else "down"
            return READY, (f"{len(down)} of {self.size} instances {what} ({latest})")
        if restarting:
            return RESTARTING, f"{latest}; restarting it"
        return FAILED, f"{GAVE_UP} ({MAX_FAILURES} failed restarts in a row; last: {latest})"

    def report(self) -> None:
        """Tell ``on_state`` the version's health now (no-op before start)."""
        if self._on_state is None or not self._started or self._stop.is_set():
            return
        with self._report_lock:
            self._on_state(*self.state())


def _outcome(done: Future[Outputs]) -> tuple[BaseException | None, Outputs | None]:
    if done.cancelled():  # nothing cancels these: the callers hold the outer futures
        return ModelNotReady("the execution was cancelled"), None
    error = done.exception()
    return error, None if error is not None else done.result()


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MintError) else repr(exc)
