"""Model lifecycle: which versions are served, and availability-preserving updates.

For each model, ``REPO/<model>/config.json``'s version policy picks the versions to serve out
of those on disk. :meth:`Lifecycle.reconcile` (called at startup, by the poll thread, and by the
repository API) loads what is missing and unloads what is no longer wanted, always in this
order, on a loader thread, never on the request path:

1. LOADING: metadata, the executors (``instances`` forked workers at SCHED_IDLE, run only in
   the gaps between live requests: :mod:`.forkserver`, :mod:`.gaps`, :mod:`.instances`);
2. WARMING: replay ``warmup/`` on each until the runs stop getting faster (:mod:`.warmup`),
   so that lazy initialisation never lands on live requests;
3. READY: the workers are raised to normal priority, then the served set is replaced in one
   assignment (the atomic switch);
4. the versions no longer wanted go DRAINING (no new requests, in-flight ones finish), then
   UNLOADED (worker stopped), and are then forgotten with their metrics (a server updated
   every few seconds holds the same state after a thousand updates as after one). Each load
   and unload logs its phases, their times and CPU (:mod:`.phases`).

A version that fails at 1-2 is FAILED with a reason and never takes traffic; while any wanted
version is not READY nothing is unloaded, so the old version keeps serving.

A served version's workers are supervised (:mod:`.instances`): a dead one restarts on its
own. While none of its instances is live the version is RESTARTING (still routed to: its
requests wait for the restart, but it is not ready); one that cannot be restarted is FAILED.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._repository import ModelConfig, ModelRepository, VersionRef
from ..errors import InvalidInput, MintError, NotFound, RepositoryError
from .decoding import release_free_memory
from .instances import RESTARTING
from .phases import PhaseClock
from .reporting import IGNORED, LogOnce, index_entry, index_order
from .warmup import warmup

if TYPE_CHECKING:
    from .batching import DynamicBatcher
    from .instances import InstancePool
    from .model import LoadedModel

log = logging.getLogger("modelmint._serve")

LOADING, WARMING, READY, DRAINING, UNLOADED, FAILED = (
    "LOADING", "WARMING", "READY", "DRAINING", "UNLOADED", "FAILED")
SERVING = (READY, RESTARTING)  # the states that are routed to
DRAIN_TIMEOUT_S = 30.0


@dataclass(eq=False)
class Servable:
    """One version as the lifecycle sees it; ``model``/``executor`` exist once loaded."""

    ref: VersionRef
    config: ModelConfig
    state: str = LOADING
    reason: str = ""
    model: LoadedModel | None = None
    executor: InstancePool | None = None
    batcher: DynamicBatcher | None = None
    loop: asyncio.AbstractEventLoop | None = None  # the batcher's
    inflight: int = 0  # changed on the event loop thread only
    # Running a request twice has no effect beyond its answer, so one whose worker died may
    # run again on another instance. True of every model served here (pure functions).
    stateless: bool = True

    @property
    def version(self) -> int:
        return self.ref.version

    def pids(self) -> list[int]:
        return [] if self.executor is None else self.executor.pids()


class Lifecycle:
    """The versions of every model and their states; see the module docstring."""

    def __init__(self, repo: ModelRepository, build: Callable[[Servable], None],
                 only: set[str] | None, hooks: Callable[[], Any]) -> None:
        self.repo = repo
        self.build = build  # fills servable.model and .executor, not started (or raises)
        self.only = only
        self.hooks = hooks  # the metrics object (or None): observe_load, set_state
        self.versions: dict[str, dict[int, Servable]] = {}
        # model -> SERVING servables by version; replaced wholesale, so readers need no lock.
        self.served: dict[str, dict[int, Servable]] = {}
        self.errors: dict[str, str] = {}  # model-level failures (config.json)
        self.unloaded: set[str] = set()  # explicitly unloaded: polling leaves them alone
        self._lock = threading.RLock()  # one load/unload at a time
        # States change on loader and supervision threads: each change and the publishing of
        # its effect happen together (a short hold, unlike _lock, held for whole loads).
        self._states_lock = threading.RLock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._warn_ignored = LogOnce(log, logging.WARNING)  # by folder ("": the root)
        self._poll_failed = LogOnce(log, logging.ERROR)  # by model ("": the whole pass)

    # --- states ----------------------------------------------------------------------------

    def _set(self, s: Servable, state: str, reason: str = "") -> None:
        with self._states_lock:
            s.state, s.reason = state, reason
            setter = getattr(self.hooks(), "set_state", None)
            if setter is not None:
                setter(s.ref.model, str(s.version), state.lower())

    def _publish(self, model: str) -> None:
        with self._states_lock:
            serving = {v: s for v, s in sorted(self.versions.get(model, {}).items())
                       if s.state in SERVING}
            if serving:
                self.served[model] = serving
            else:
                self.served.pop(model, None)

    def instances_changed(self, s: Servable, state: str, reason: str) -> None:
        """The supervision of ``s``'s workers (:mod:`.instances`) reports its health: READY,
        RESTARTING (none live, one restarting) or FAILED (none left)."""
        with self._states_lock:
            if s.state not in SERVING:  # loading, draining or gone: the loader decides
                return
            self._set(s, state, reason)
            self._publish(s.ref.model)

    # --- reconcile -------------------------------------------------------------------------

    def models_to_watch(self) -> list[str]:
        names = set(self.repo.models()) | set(self.versions)
        return sorted(n for n in names if self.only is None or n in self.only)

    def reconcile(self, model: str, explicit: bool = False) -> list[int]:
        """Apply the model's folder and policy; returns the versions the policy selects."""
        with self._lock:
            try:
                on_disk, ignored = self.repo.scan(model)
                self._warn_ignored(model, (f"{item.reason}; ignored" for item in ignored))
                if not on_disk and model not in self.versions:
                    self.errors.pop(model, None)
                    return []  # a folder with nothing to serve, and nothing served from it
                config = ModelConfig.load(self.repo.root / model)
            except RepositoryError as exc:
                if self.errors.get(model) != str(exc):
                    log.error("model %r: %s; keeping what it serves", model, exc)
                self.errors[model] = str(exc)
                return []
            self.errors.pop(model, None)
            refs = {r.version: r for r in on_disk}
            wanted = config.version_policy.select(list(refs))
            current = self.versions.setdefault(model, {})
            for version in wanted:
                s = current.get(version)
                if s is None or s.state == UNLOADED or (s.state == FAILED and explicit):
                    if s is not None:
                        self._close(s)  # a dead worker's leftovers
                    current[version] = s = Servable(refs[version], config)
                    self._load(s)
                elif s.state in SERVING:
                    s.config = config
            if all(current[v].state == READY for v in wanted):
                clocks = [self._unload(s) for version, s in list(current.items())
                          if version not in wanted and s.state in SERVING]
                if clocks:
                    # What the old version held is free now; without this glibc keeps the freed
                    # pages in its per-thread arenas and the RSS creeps up update after update
                    # (~5 % of a 100 MB server under mixed traffic). A few ms, once per update.
                    clocks[-1].mark("releasing")
                    release_free_memory()
                for clock in clocks:
                    clock.done()
            for version, s in list(current.items()):
                # An unloaded version is forgotten (the index reports it as not selected by the
                # policy); a failed one once gone from disk, its reason being worth reporting.
                if s.state == UNLOADED or (version not in refs and s.state == FAILED):
                    del current[version]
                    self._forget_metrics(s)
            return wanted

    def _forget_metrics(self, s: Servable) -> None:
        setter = getattr(self.hooks(), "set_state", None)
        if setter is not None:
            setter(s.ref.model, str(s.version), UNLOADED.lower())

    def _load(self, s: Servable) -> None:
        where = f"model {s.ref.model!r} version {s.version}"
        started = time.perf_counter()
        loaded: list[float] = []
        clock = PhaseClock(s.ref.model, s.version, "load", s.pids)

        def warming() -> None:
            loaded.append(time.perf_counter())
            clock.mark("warming")
            self._set(s, WARMING)

        try:
            clock.mark("loading")
            self._set(s, LOADING)
            self.build(s)
            model = s.model
            assert model is not None and s.executor is not None
            # Every instance is started, warmed and raised to normal priority.
            runs = s.executor.start(lambda executor: warmup(model, executor), warming)
            warm = time.perf_counter()
        except Exception as exc:
            if s.executor is not None:
                s.executor.close()
            s.executor = None
            reason = str(exc) if isinstance(exc, MintError) else repr(exc)
            self._set(s, FAILED, reason)
            log.error("%s failed to load, skipping it: %s", where, reason)
            clock.done("failed")
            return
        self._set(s, READY)
        self._publish(s.ref.model)  # the atomic switch: new requests may pick this version now
        clock.done("ready")
        s.executor.report()  # a worker that died since it was warmed is restarting already
        observe = getattr(self.hooks(), "observe_load", None)
        if observe is not None:
            observe(s.ref.model, str(s.version), loaded[0] - started, warm - loaded[0])
        log.info("loaded %s in %.2f s, warmed up with %d run(s) in %.2f s", where,
                 loaded[0] - started, runs, warm - loaded[0])

    def _unload(self, s: Servable) -> PhaseClock:
        """Drain and stop ``s``; the returned clock's step is over once ``done()``."""
        clock = PhaseClock(s.ref.model, s.version, "unload", s.pids)
        clock.mark("draining")
        self._set(s, DRAINING)
        self._publish(s.ref.model)  # no new requests from here on
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while s.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        clock.mark("stopping")
        self._close(s)
        self._set(s, UNLOADED, "unloaded")
        log.info("unloaded model %r version %d", s.ref.model, s.version)
        return clock

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
        wanted = self.reconcile(model, explicit=True)
        if model in self.errors:
            raise InvalidInput(f"failed to load model {model!r}: {self.errors[model]}")
        # Only what the policy selects: a version that failed before and is no longer wanted
        # stays in the index, but must not fail the load of the one that replaced it.
        failed = [s for v, s in self.versions.get(model, {}).items()
                  if s.state == FAILED and v in wanted]
        if failed:
            raise InvalidInput(f"failed to load model {model!r}: " + "; ".join(
                f"version {s.version}: {s.reason}" for s in failed))

    def unload(self, model: str) -> None:
        with self._lock:
            if model not in self.versions and model not in self.repo.models():
                raise NotFound(f"unknown model {model!r}")
            self.unloaded.add(model)
            for s in list(self.versions.get(model, {}).values()):
                if s.state in SERVING:
                    self._unload(s).done()
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
        # This thread is what applies hot updates: a fault it does not survive would freeze
        # the served versions for good, so every pass logs what failed and the next one runs.
        while not self._stop.wait(interval_s):
            try:
                self._poll_once()
            except Exception as exc:
                self._poll_fault("", exc)
            else:
                self._poll_failed("", ())

    def _poll_once(self) -> None:
        folders, ignored = self.repo.model_folders()
        self._warn_ignored("", (f"{item.reason}; ignored" for item in ignored))
        # Each model on its own, the listing of its folder included: no model's fault may keep
        # the others from their updates.
        for model in sorted(set(folders) | set(self.versions)):
            if (model in self.unloaded or self._stop.is_set()
                    or (self.only is not None and model not in self.only)):
                continue
            try:
                self.reconcile(model)
            except Exception as exc:  # one model's problem must not stop polling the others
                self._poll_fault(model, exc)
            else:
                self._poll_failed(model, ())

    def _poll_fault(self, model: str, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, MintError) else repr(exc)
        what = f"model {model!r}" if model else "the repository"
        self._poll_failed(model, [f"polling {what} failed, polling goes on: {text}"],
                          None if isinstance(exc, MintError) else exc)

    # --- reporting -------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        try:
            folders = self.repo.model_folders()[0]
        except RepositoryError as exc:  # report what is in memory rather than fail
            log.error("listing the repository: %s", exc)
            folders = []
        names = {n for n in folders if self.only is None or n in self.only}
        out: list[dict[str, str]] = []
        for model in sorted(names | set(self.versions)):
            out.extend(self._model_index(model))
        out.sort(key=index_order)
        return [e for e in out if e["state"] == READY] if ready_only else out

    def _model_index(self, model: str) -> list[dict[str, str]]:
        states = dict(self.versions.get(model, {}))  # a copy: the loader may be adding one
        out: list[dict[str, str]] = []
        try:
            on_disk, ignored = self.repo.scan(model)
        except RepositoryError as exc:  # unreadable: report what is in memory as it is
            out.append(index_entry(model, "", FAILED, str(exc)))
            on_disk, ignored = [s.ref for s in states.values()], []
        try:
            policy = ModelConfig.load(self.repo.root / model).version_policy.describe()
        except RepositoryError as exc:
            out.append(index_entry(model, "", FAILED, str(exc)))
            policy = "?"
        self._warn_ignored(model, (f"{item.reason}; ignored" for item in ignored))
        why_not_on_disk = {item.name: item.reason for item in ignored}
        disk = {r.version for r in on_disk}
        for ref in on_disk:
            if ref.version not in states:
                out.append(index_entry(model, str(ref.version), UNLOADED,
                                       f"not selected by the version policy ({policy})"))
        for version, s in sorted(states.items()):
            reason = s.reason
            if version not in disk:  # loaded (or tried) from a folder that has since changed
                gone = why_not_on_disk.pop(
                    str(version), f"its version folder '{model}/{version}' was deleted")
                if s.state == READY:
                    reason = (f"{gone}; it serves from memory until the model is polled or "
                              "loaded again")
                else:
                    reason = f"{gone}; {reason}" if reason else gone
            out.append(index_entry(model, str(version), s.state, reason))
        out.extend(index_entry(model, name, IGNORED, reason)
                   for name, reason in why_not_on_disk.items())
        return out

