"""Rolling updates across Ray Serve replicas (``mint serve --ray``): one coordinator, every
replica in turn, a version that fails anywhere rolled back everywhere.

No replica polls the repository. One named Ray actor, the :class:`RolloutCoordinator`, does
(one LIST of the root and one per model per ``--poll`` interval on an ``s3://`` repository) and
decides, for each model, which versions every replica routes requests to (the *committed*
versions) and which it holds loaded beside them. Replicas pull their orders
(:class:`.replica.ReplicaSync`); the coordinator never calls a replica.

Protocol (Ray actor calls, replica → coordinator):

* ``sync(replica_id, report)`` every ``SYNC_INTERVAL_S``. ``report`` is ``{"pid": int,
  "models": {model: {"ready": [versions READY here], "routed": [versions answering here],
  "failed": {version: reason}, "waiting": reason or None}}}``; the answer is ``{model:
  {"route": [versions], "hold": [versions], "failed": {version: reason}}}`` for every model the
  coordinator serves. The replica loads and warms up ``hold`` beside what it routes, switches
  its routing to ``route`` once all of it is ready (one assignment), then unloads what is in
  neither. A model missing from the answer is unloaded.
* A rollout of a model from committed versions C to target T (what its version policy selects,
  leaving out every version that failed before): live replicas take turns, in id order. The
  replica whose turn it is, and those that had theirs, hold C ∪ T and route C; the others hold
  and route C. A turn ends when its replica reports T ready. Once every live replica has had
  one, T is committed: each replica switches to T (already warm) and unloads the rest. While a
  version rolls out every replica answers with C, so the number of ready replicas never drops.
* Rollback: a replica reporting a version of T failed (it did not load or warm up), or a turn
  longer than ``TURN_TIMEOUT_S``, ends the rollout. The version is remembered as failed, every
  replica holds C again (unloading what it staged) and the model is planned again without it.
  Nothing routes to a version before its commit, so a failed version never answers a request.
* A replica that has not synced for ``LIVE_S`` is gone (killed, node lost): it loses its turn
  and the rollout goes on without it. A new replica (Ray Serve replaces dead ones) is handed C
  first, and its constructor returns only once it routes C: Ray Serve sends it nothing before.
* Repository faults (a LIST or a download failing, the object store down) are not version
  faults: the replica reports ``waiting`` and retries at its next sync; the turn waits.

``repository_load(model)`` (``POST /v2/repository/models/M/load`` on any replica) plans the
model now and waits for its rollout to end.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .._repository import ModelConfig, open_repository
from ..errors import MintError
from .reporting import LogOnce

log = logging.getLogger("modelmint._serve")

SYNC_INTERVAL_S = 0.25
LIVE_S = 5.0  # no sync for this long: the replica is gone
TURN_TIMEOUT_S = 300.0
FORGET_S = 60.0  # a gone replica's entry is dropped after this long

Orders = dict[str, dict[str, Any]]


@dataclass
class Rollout:
    target: tuple[int, ...]
    staged: set[str] = field(default_factory=set)
    turn: str | None = None
    turn_started: float = 0.0


@dataclass
class ReplicaState:
    pid: int
    seen: float
    models: dict[str, dict[str, Any]]


class RolloutCoordinator:
    """See the module docstring. Runs as a threaded Ray actor (every method may be called
    concurrently); ``poll_interval_s`` 0 plans only at start and on ``repository_load``."""

    def __init__(self, repo: str, poll_interval_s: float = 0.0) -> None:
        self.repo = open_repository(repo)
        self.committed: dict[str, tuple[int, ...]] = {}
        self.committed_at: dict[str, float] = {}  # time.monotonic() of each model's commit
        self.rollouts: dict[str, Rollout] = {}
        self.failed: dict[str, dict[int, str]] = {}  # model -> version -> why
        self.replicas: dict[str, ReplicaState] = {}
        self.polls = 0
        self._lock = threading.Condition()
        self._poll_lock = threading.Lock()  # one pass over the repository at a time
        self._replan: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poll_failed = LogOnce(log, logging.ERROR)
        self.poll_once()
        self._poller = threading.Thread(target=self._poll_loop, args=(poll_interval_s,),
                                        name="modelmint-rollout", daemon=True)
        self._poller.start()

    # --- planning --------------------------------------------------------------------------

    def _poll_loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            self._wake.wait(interval_s if interval_s > 0 else None)
            self._wake.clear()
            with self._lock:
                replan, self._replan = self._replan, set()
            try:
                if interval_s > 0:
                    self.poll_once()
                else:
                    for model in sorted(replan):
                        self.poll_once(model)
            except Exception as exc:  # polling is what applies updates: it must go on
                self._poll_failed("", [f"polling the repository failed, polling goes on: "
                                       f"{exc!r}"])

    def poll_once(self, only: str | None = None) -> None:
        """Plan every model (or ``only``): start a rollout where the policy selects versions
        other than the committed ones."""
        with self._poll_lock:
            if only is None:
                try:
                    folders = self.repo.model_folders()[0]
                except MintError as exc:
                    self._poll_failed("", [f"listing the repository failed: {exc.message}"])
                    return
                self._poll_failed("", ())
                names = sorted(set(folders) | set(self.committed))
            else:
                names = [only]
            for model in names:
                try:
                    refs = self.repo.scan(model)[0]
                    config = ModelConfig.load(self.repo.root / model)
                except MintError as exc:  # keep what it serves, as the single server does
                    self._poll_failed(model, [f"model {model!r}: {exc.message}; keeping what "
                                              "it serves"])
                    continue
                self._poll_failed(model, ())
                with self._lock:
                    self._plan(model, [r.version for r in refs], config)
            self.polls += 1

    def _plan(self, model: str, on_disk: list[int], config: ModelConfig) -> None:
        failed = self.failed.setdefault(model, {})
        for version in [v for v in failed if v not in on_disk]:  # gone: forget it
            del failed[version]
        wanted = tuple(config.version_policy.select([v for v in on_disk if v not in failed]))
        current = self.rollouts.get(model)
        if current is not None:
            if set(current.target) <= set(on_disk):
                return  # under way; a newer version waits for the next plan
            log.warning("model %r: version(s) %s left the repository during their rollout; "
                        "planning again", model, list(current.target))
            del self.rollouts[model]
        committed = self.committed.get(model, ())
        if wanted == committed:
            return
        if not set(wanted) - set(committed):  # nothing to load: only unloading
            self._commit(model, wanted)
            return
        self.rollouts[model] = Rollout(wanted)
        log.info("model %r: rolling out version(s) %s (serving %s)", model, list(wanted),
                 list(committed))
        self._advance(model, time.monotonic())

    def _commit(self, model: str, versions: tuple[int, ...]) -> None:
        self.rollouts.pop(model, None)
        if versions:
            self.committed[model] = versions
            self.committed_at[model] = time.monotonic()
        else:
            self.committed.pop(model, None)
            self.committed_at.pop(model, None)
        log.info("model %r: every replica now serves version(s) %s", model, list(versions))
        self._lock.notify_all()

    def _abort(self, model: str, reasons: dict[int, str]) -> None:
        self.rollouts.pop(model, None)
        self.failed.setdefault(model, {}).update(reasons)
        for version, reason in sorted(reasons.items()):
            log.error("model %r version %d rolled back on every replica: %s", model, version,
                      reason)
        self._replan.add(model)
        self._wake.set()
        self._lock.notify_all()

    def _advance(self, model: str, now: float) -> None:
        r = self.rollouts[model]
        live = {rid for rid, rep in self.replicas.items() if now - rep.seen < LIVE_S}
        r.staged &= live
        if r.turn is not None and r.turn not in live:
            log.warning("model %r: replica %s left during its turn", model, r.turn)
            r.turn = None
        if r.turn is not None and now - r.turn_started > TURN_TIMEOUT_S:
            waiting = self.replicas[r.turn].models.get(model, {}).get("waiting")
            why = f"replica {r.turn} did not have it ready within {TURN_TIMEOUT_S:g} s"
            self._abort(model, {v: why + (f" ({waiting})" if waiting else "")
                                for v in r.target if v not in self.committed.get(model, ())})
            return
        if r.turn is None:
            pending = sorted(live - r.staged)
            if pending:
                r.turn, r.turn_started = pending[0], now
            elif live:
                self._commit(model, r.target)

    # --- the replicas' calls ---------------------------------------------------------------

    def sync(self, replica_id: str, report: dict[str, Any]) -> Orders:
        now = time.monotonic()
        with self._lock:
            models = report.get("models", {})
            self.replicas[replica_id] = ReplicaState(int(report.get("pid", 0)), now, models)
            for rid in [k for k, rep in self.replicas.items() if now - rep.seen > FORGET_S]:
                del self.replicas[rid]
            for model, r in list(self.rollouts.items()):
                state = models.get(model, {})
                new = set(r.target) - set(self.committed.get(model, ()))
                broken = {int(v): f"on replica {replica_id}: {why}"
                          for v, why in state.get("failed", {}).items() if int(v) in new}
                if broken:
                    self._abort(model, broken)
                elif set(r.target) <= set(state.get("ready", ())):
                    r.staged.add(replica_id)
                    if r.turn == replica_id:
                        r.turn = None
            for model in list(self.rollouts):
                self._advance(model, now)
            return self._orders(replica_id)

    def _orders(self, replica_id: str) -> Orders:
        out: Orders = {}
        for model in sorted(set(self.committed) | set(self.rollouts)):
            route = self.committed.get(model, ())
            r = self.rollouts.get(model)
            hold = route
            if r is not None and (replica_id in r.staged or replica_id == r.turn):
                hold = tuple(sorted(set(route) | set(r.target)))
            out[model] = {"route": list(route), "hold": list(hold),
                          "failed": dict(self.failed.get(model, {}))}
        return out

    def repository_load(self, model: str, timeout_s: float = 600.0) -> dict[str, Any]:
        """Plan ``model`` now and wait for its rollout to end: ``{"committed": [...],
        "failed": {version: reason}}`` (the versions that failed during this call)."""
        with self._lock:
            before = dict(self.failed.get(model, {}))
        self.poll_once(model)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while (model in self.rollouts or model in self._replan) and (
                    time.monotonic() < deadline):
                self._lock.wait(0.5)
            failed = {v: why for v, why in self.failed.get(model, {}).items() if v not in before}
            return {"committed": list(self.committed.get(model, ())), "failed": failed}

    # --- reporting -------------------------------------------------------------------------

    def wait_settled(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Wait until no rollout is under way and every live replica routes the committed
        versions (where it could load them); returns :meth:`status`."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not self._settled() and time.monotonic() < deadline:
                self._lock.wait(0.2)
        return self.status()

    def _settled(self) -> bool:
        if self.rollouts or self._replan:
            return False
        now = time.monotonic()
        for rep in self.replicas.values():
            if now - rep.seen >= LIVE_S:
                continue
            for model, versions in self.committed.items():
                state = rep.models.get(model, {})
                if (sorted(state.get("routed", ())) != sorted(versions)
                        and not set(versions) & {int(v) for v in state.get("failed", {})}):
                    return False
        return any(now - rep.seen < LIVE_S for rep in self.replicas.values())

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            return {
                "committed": {m: list(v) for m, v in self.committed.items()},
                "committed_at": dict(self.committed_at),
                "rollouts": {m: {"target": list(r.target), "staged": sorted(r.staged),
                                 "turn": r.turn} for m, r in self.rollouts.items()},
                "failed": {m: dict(f) for m, f in self.failed.items() if f},
                "replicas": {rid: {"pid": rep.pid, "age_s": round(now - rep.seen, 2),
                                   "live": now - rep.seen < LIVE_S, "models": rep.models}
                             for rid, rep in self.replicas.items()},
                "polls": self.polls,
            }

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
