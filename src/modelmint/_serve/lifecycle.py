"""Model lifecycle: which versions are served, and availability-preserving updates.

For each model, ``REPO/<model>/config.json``'s version policy picks the versions to serve out
of those on disk. :meth:`Lifecycle.reconcile` (called at startup, by the poll thread, and by the
repository API) loads what is missing and unloads what is no longer wanted, always in this
order, on a loader thread, never on the request path:

1. LOADING: metadata, the executor (a worker process at SCHED_IDLE, see :mod:`.worker`);
2. WARMING: replay ``warmup/`` until the median latency of the last 5 runs is within 10% of the
   5 before (at most 10 s), so lazy initialisation never lands on live requests;
3. READY: the worker is raised to normal priority, then the served set is replaced in one
   assignment (the atomic switch);
4. the versions no longer wanted go DRAINING (no new requests, in-flight ones finish), then
   UNLOADED (worker stopped).

A version that fails at 1-2 is FAILED with a reason and never takes traffic; while any wanted
version is not READY nothing is unloaded, so the old version keeps serving. A worker that dies
marks its version FAILED; the next poll (or an explicit load) reloads it.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._repository import ModelConfig, ModelRepository, VersionRef
from ..errors import InvalidInput, MintError, NotFound, RepositoryError

if TYPE_CHECKING:
    from .batching import DynamicBatcher
    from .executors import Executor
    from .model import LoadedModel

log = logging.getLogger("modelmint._serve")

LOADING, WARMING, READY, DRAINING, UNLOADED, FAILED = (
    "LOADING", "WARMING", "READY", "DRAINING", "UNLOADED", "FAILED")
WARMUP_CAP_S = 10.0
WARMUP_RUN_TIMEOUT_S = 120.0  # one run, even at idle priority on a saturated CPU
WARMUP_WINDOW = 5
WARMUP_TOLERANCE = 0.10
DRAIN_TIMEOUT_S = 30.0


@dataclass(eq=False)
class Servable:
    """One version as the lifecycle sees it; ``model``/``executor`` exist once loaded."""

    ref: VersionRef
    config: ModelConfig
    state: str = LOADING
    reason: str = ""
    model: LoadedModel | None = None
    executor: Executor | None = None
    batcher: DynamicBatcher | None = None
    loop: asyncio.AbstractEventLoop | None = None  # the batcher's
    inflight: int = 0  # changed on the event loop thread only
    retry: bool = False  # reload at the next poll (the worker died, the files may be fine)

    @property
    def version(self) -> int:
        return self.ref.version


def warmup(model: LoadedModel, executor: Executor, cap_s: float = WARMUP_CAP_S) -> int:
    """Replay the version's warmup requests until latency is stable; returns the run count.

    Every recorded request must succeed: a version that cannot answer its own recorded request
    is never served."""
    requests = model.warmup_requests()
    if not requests:
        return 0
    try:
        # Decoded and preprocessed once: that part runs in the serving process at normal
        # priority, so repeating it would compete with live requests; only the worker's
        # session needs warming.
        batches = [model.prepare(request) for request in requests]
    except MintError as exc:
        raise RepositoryError(f"{model.ref.path}: warmup request failed: {exc}") from exc
    latencies: list[float] = []
    deadline = time.monotonic() + cap_s
    while True:
        index = len(latencies) % len(requests)
        started = time.perf_counter()
        try:
            probabilities = executor.run(batches[index]).result(WARMUP_RUN_TIMEOUT_S)
            if len(latencies) < len(requests):  # every recorded request answered once
                model.respond(requests[index], probabilities)
        except MintError as exc:
            raise RepositoryError(f"{model.ref.path}: warmup request failed: {exc}") from exc
        latencies.append(time.perf_counter() - started)
        if len(latencies) >= max(2 * WARMUP_WINDOW, len(requests)):
            last = statistics.median(latencies[-WARMUP_WINDOW:])
            previous = statistics.median(latencies[-2 * WARMUP_WINDOW:-WARMUP_WINDOW])
            if abs(last - previous) <= WARMUP_TOLERANCE * previous:
                return len(latencies)
        if time.monotonic() > deadline:
            return len(latencies)


class Lifecycle:
    """The versions of every model and their states; see the module docstring."""

    def __init__(self, repo: ModelRepository, build: Callable[[Servable], None],
                 only: set[str] | None, hooks: Callable[[], Any]) -> None:
        self.repo = repo
        self.build = build  # fills servable.model and .executor (raises on failure)
        self.only = only
        self.hooks = hooks  # the metrics object (or None): observe_load, set_state
        self.versions: dict[str, dict[int, Servable]] = {}
        # model -> READY servables by version; replaced wholesale, so readers need no lock.
        self.served: dict[str, dict[int, Servable]] = {}
        self.errors: dict[str, str] = {}  # model-level failures (config.json)
        self.unloaded: set[str] = set()  # explicitly unloaded: polling leaves them alone
        self._lock = threading.RLock()  # one load/unload at a time
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # --- states ----------------------------------------------------------------------------

    def _set(self, s: Servable, state: str, reason: str = "") -> None:
        s.state, s.reason = state, reason
        setter = getattr(self.hooks(), "set_state", None)
        if setter is not None:
            setter(s.ref.model, str(s.version), state.lower())

    def _publish(self, model: str) -> None:
        ready = {v: s for v, s in sorted(self.versions.get(model, {}).items())
                 if s.state == READY}
        if ready:
            self.served[model] = ready
        else:
            self.served.pop(model, None)

    # --- reconcile -------------------------------------------------------------------------

    def models_to_watch(self) -> list[str]:
        names = set(self.repo.models()) | set(self.versions)
        return sorted(n for n in names if self.only is None or n in self.only)

    def reconcile(self, model: str, explicit: bool = False) -> None:
        with self._lock:
            try:
                config = ModelConfig.load(self.repo.root / model)
            except RepositoryError as exc:
                if self.errors.get(model) != str(exc):
                    log.error("model %r: %s; keeping what it serves", model, exc)
                self.errors[model] = str(exc)
                return
            self.errors.pop(model, None)
            refs = {r.version: r for r in self.repo.versions(model)}
            wanted = config.version_policy.select(list(refs))
            current = self.versions.setdefault(model, {})
            for version in wanted:
                s = current.get(version)
                if (s is None or s.state == UNLOADED
                        or (s.state == FAILED and (explicit or s.retry))):
                    if s is not None:
                        self._close(s)  # a dead worker's leftovers
                    current[version] = s = Servable(refs[version], config)
                    self._load(s)
                elif s.state == READY:
                    s.config = config
            if all(current[v].state == READY for v in wanted):
                for version, s in list(current.items()):
                    if version not in wanted and s.state == READY:
                        self._unload(s)
                        self._publish(model)
            for version, s in list(current.items()):
                if version not in refs and s.state in (UNLOADED, FAILED):
                    del current[version]  # gone from disk: nothing left to report

    def _load(self, s: Servable) -> None:
        where = f"model {s.ref.model!r} version {s.version}"
        started = time.perf_counter()
        try:
            self._set(s, LOADING)
            self.build(s)
            assert s.model is not None and s.executor is not None
            loaded = time.perf_counter()
            self._set(s, WARMING)
            runs = warmup(s.model, s.executor)
            warm = time.perf_counter()
            s.executor.promote()
        except Exception as exc:
            if s.executor is not None:
                s.executor.close()
            s.executor = None
            reason = str(exc) if isinstance(exc, MintError) else repr(exc)
            self._set(s, FAILED, reason)
            log.error("%s failed to load, skipping it: %s", where, reason)
            return
        self._set(s, READY)
        self._publish(s.ref.model)  # the atomic switch: new requests may pick this version now
        observe = getattr(self.hooks(), "observe_load", None)
        if observe is not None:
            observe(s.ref.model, str(s.version), loaded - started, warm - loaded)
        log.info("loaded %s in %.2f s, warmed up with %d run(s) in %.2f s", where,
                 loaded - started, runs, warm - loaded)

    def _unload(self, s: Servable) -> None:
        self._set(s, DRAINING)
        self._publish(s.ref.model)  # no new requests from here on
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while s.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        self._close(s)
        self._set(s, UNLOADED, "unloaded")
        log.info("unloaded model %r version %d", s.ref.model, s.version)

    def _close(self, s: Servable) -> None:
        if s.batcher is not None and s.loop is not None and not s.loop.is_closed():
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is s.loop:
                # On the loop's own thread (server shutdown): blocking here would stop the very
                # loop that must run close(); requests have drained, so let it finish on its own.
                s.loop.create_task(s.batcher.close())
            else:
                try:
                    asyncio.run_coroutine_threadsafe(s.batcher.close(), s.loop).result(10)
                except Exception as exc:  # a closed loop or stuck batch must not block unloading
                    log.warning("closing the batcher of %s: %r", s.ref.model, exc)
        s.batcher = None
        if s.executor is not None:
            s.executor.close()
            s.executor = None

    def worker_died(self, s: Servable, reason: str) -> None:
        """Called from the executor's reader thread: stop routing to it at once."""
        if s.state in (READY, WARMING, LOADING):
            s.retry = True
            self._set(s, FAILED, reason)
            self._publish(s.ref.model)
            log.error("model %r version %d: %s; marked failed (the next poll reloads it)",
                      s.ref.model, s.version, reason)

    # --- explicit control (repository API, SDK) --------------------------------------------

    def load_version(self, s: Servable) -> None:
        """Serve ``s`` whatever the policy says (the in-process SDK's one version)."""
        with self._lock:
            self.versions.setdefault(s.ref.model, {})[s.version] = s
            self._load(s)

    def load(self, model: str) -> None:
        if model not in self.repo.models() or (self.only is not None and model not in self.only):
            raise NotFound(f"model {model!r} is not in repository {self.repo.root}")
        self.unloaded.discard(model)
        self.reconcile(model, explicit=True)
        if model in self.errors:
            raise InvalidInput(f"failed to load model {model!r}: {self.errors[model]}")
        failed = [s for s in self.versions.get(model, {}).values() if s.state == FAILED]
        if failed:
            raise InvalidInput(f"failed to load model {model!r}: " + "; ".join(
                f"version {s.version}: {s.reason}" for s in failed))

    def unload(self, model: str) -> None:
        with self._lock:
            if model not in self.versions and model not in self.repo.models():
                raise NotFound(f"unknown model {model!r}")
            self.unloaded.add(model)
            for s in list(self.versions.get(model, {}).values()):
                if s.state == READY:
                    self._unload(s)
            self._publish(model)

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(30)
        with self._lock:
            for versions in self.versions.values():
                for s in versions.values():
                    self._close(s)
            self.served.clear()

    # --- polling ---------------------------------------------------------------------------

    def start_polling(self, interval_s: float) -> None:
        if interval_s <= 0 or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll, args=(interval_s,),
                                        name="modelmint-poll", daemon=True)
        self._poller.start()

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            for model in self.models_to_watch():
                if model in self.unloaded or self._stop.is_set():
                    continue
                try:
                    self.reconcile(model)
                except Exception:  # one model's problem must not stop polling the others
                    log.exception("polling model %r", model)

    # --- reporting -------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for model in self.models_to_watch():
            states = dict(self.versions.get(model, {}))
            try:
                policy = ModelConfig.load(self.repo.root / model).version_policy.describe()
            except RepositoryError:
                policy = "?"
            for ref in self.repo.versions(model):
                if ref.version not in states:
                    out.append({"name": model, "version": str(ref.version), "state": UNLOADED,
                                "reason": f"not selected by the version policy ({policy})"})
            for version, s in sorted(states.items()):
                out.append({"name": model, "version": str(version), "state": s.state,
                            "reason": s.reason})
        out.sort(key=lambda e: (e["name"], int(e["version"])))
        return [e for e in out if e["state"] == READY] if ready_only else out

