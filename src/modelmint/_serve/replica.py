"""One replica's side of the rolling update of :mod:`.rollout`: a data plane that answers only
for the versions the coordinator committed, and the loop that pulls its orders.

:class:`ReplicaDataPlane` is the server's :class:`.dataplane.DataPlane` (same worker processes,
warm-up, draining, request semantics) with one difference: a version is *loaded* by the
lifecycle as usual (LOADING, WARMING, READY) but *answers* only once the coordinator routes it
(:attr:`ReplicaDataPlane.routed`), so a version can wait, warm, beside the one in service until
every replica has it. Its own repository polling is never started.

This module needs no Ray: :class:`ReplicaSync` takes the coordinator's ``sync`` as a function.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._repository import ModelConfig, ModelRepository
from ..errors import Conflict, InvalidInput, MintError, ModelNotReady, NotFound
from .dataplane import DataPlane
from .decoding import release_free_memory
from .lifecycle import FAILED, READY, SERVING, Servable
from .rollout import SYNC_INTERVAL_S, Orders

log = logging.getLogger("modelmint._serve")

Sync = Callable[[str, dict[str, Any]], Orders]
RETRY_S = 2.0  # between attempts to read a version while the repository fails


class ReplicaDataPlane(DataPlane):
    """See the module docstring. ``load_model`` asks the coordinator (the repository API's
    load: plan the model now and wait for its rollout)."""

    def __init__(self, repo: ModelRepository, *,
                 load_model: Callable[[str], dict[str, Any]] | None = None,
                 **options: Any) -> None:
        super().__init__(repo, isolation="process", **options)
        self.routed: dict[str, tuple[int, ...]] = {}  # replaced wholesale: readers need no lock
        self.rolled_back: dict[str, dict[int, str]] = {}
        self.waiting: dict[str, str] = {}  # model -> why its versions cannot be read now
        self._retry_at: dict[str, float] = {}
        self._coordinator_load = load_model

    # --- what answers ----------------------------------------------------------------------

    def load(self) -> None:
        """Nothing is loaded by the policy here: the coordinator's orders load versions."""
        self._ready = True

    def servable(self, model: str, version: int | None = None) -> Servable:
        routed = self.routed.get(model, ())
        if not routed:
            if self.lifecycle.versions.get(model):  # staged only: its first rollout
                raise ModelNotReady(f"model {model!r} is not ready: its first version is still "
                                    "rolling out", retry_after=1.0)
            return super().servable(model, version)  # unknown: NotFound with what is served
        if version is None:
            version = max(routed)
        elif version not in routed:
            serving = ", ".join(str(v) for v in routed)
            raise NotFound(f"model {model!r} version {version} is not served (every replica "
                           f"serves version(s) {serving})")
        return super().servable(model, version)

    def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        meta = super().model_metadata(model, version)
        if version is None:
            meta["versions"] = [str(v) for v in self.routed.get(model, ())]
        return meta

    def not_ready_reason(self) -> str | None:
        if not self._ready:
            return "the replica is still loading models"
        missing = []
        for model, routed in sorted(self.routed.items()):
            versions = dict(self.lifecycle.versions.get(model, {}))
            if not any(versions.get(v) is not None and versions[v].state == READY
                       for v in routed):
                missing.append(f"model {model!r} has no ready version")
        return "; ".join(missing) if missing else None

    # --- the repository API: the coordinator decides ---------------------------------------

    def repository_load(self, model: str) -> None:
        if self._coordinator_load is None:
            raise Conflict("this replica has no rollout coordinator to ask")
        result = self._coordinator_load(model)
        if result["failed"]:
            raise InvalidInput(f"failed to load model {model!r}, rolled back on every replica: "
                               + "; ".join(f"version {v}: {why}"
                                           for v, why in sorted(result["failed"].items())))
        if not result["committed"]:
            raise NotFound(f"model {model!r} has no version to serve in repository "
                           f"{self.repo.name}")

    def repository_unload(self, model: str) -> None:
        raise Conflict(f"model {model!r} cannot be unloaded from one replica: under Ray Serve "
                       "every replica serves what the version policy selects; remove the "
                       "version from the repository (or change config.json) instead")

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        index = super().repository_index(ready_only)
        for entry in index:
            failed = self.rolled_back.get(entry["name"], {})
            version = int(entry["version"]) if entry["version"].isdigit() else None
            if version in failed and entry["state"] != READY:
                entry["state"] = FAILED
                entry["reason"] = f"rolled back on every replica: {failed[version]}"
        return [e for e in index if e["state"] == READY] if ready_only else index

    # --- applying orders -------------------------------------------------------------------

    def apply(self, orders: Orders) -> None:
        """Load what ``orders`` hold, route what they route once it is ready, unload the
        rest (see :mod:`.rollout`)."""
        for model in [m for m in list(self.lifecycle.versions) if m not in orders]:
            self.routed = {m: v for m, v in self.routed.items() if m != model}
            self._drop(model, set())
        for model, order in orders.items():
            self.rolled_back[model] = {int(v): why for v, why in order["failed"].items()}
            missing = [v for v in order["hold"]  # loaded, or failed here (never retried)
                       if v not in self.lifecycle.versions.get(model, {})]
            if not missing:
                self.waiting.pop(model, None)
            elif time.monotonic() >= self._retry_at.get(model, 0.0):
                try:
                    for version in missing:
                        self._stage(model, version)
                    self.waiting.pop(model, None)
                except MintError as exc:  # the repository, not the version: retried
                    self.waiting[model] = exc.message
                    self._retry_at[model] = time.monotonic() + RETRY_S
            ready = {v for v, s in dict(self.lifecycle.versions.get(model, {})).items()
                     if s.state in SERVING}
            route = tuple(order["route"])
            if set(route) <= ready and self.routed.get(model, ()) != route:
                self.routed = {**{m: v for m, v in self.routed.items() if m != model},
                               **({model: route} if route else {})}
            self._drop(model, set(order["hold"]) | set(self.routed.get(model, ())))

    def _stage(self, model: str, version: int) -> None:
        """Load and warm up ``version`` beside what answers; a version fault leaves it FAILED
        (reported), a repository fault raises MintError."""
        ref = self.repo.version(model, version)
        config = ModelConfig.load(self.repo.root / model)
        s = Servable(ref, config)
        self.lifecycle.load_version(s)  # READY or FAILED; published, but routed only by us
        if s.state == READY:
            log.info("model %r version %d is ready beside the served one(s)", model, version)

    def _drop(self, model: str, keep: set[int]) -> None:
        """Unload every version of ``model`` outside ``keep``: the lifecycle's own unloading
        (draining in-flight requests first), then forget it as the lifecycle does."""
        lc = self.lifecycle
        dropped = False
        with lc._lock:
            current = lc.versions.get(model, {})
            for version, s in list(current.items()):
                if version in keep:
                    continue
                if s.state in SERVING:
                    lc._unload(s)
                else:
                    lc._close(s)
                del current[version]
                lc._forget_metrics(s)
                dropped = True
            if not current:
                lc.versions.pop(model, None)
            lc._publish(model)
        if dropped:
            release_free_memory()

    def report(self) -> dict[str, Any]:
        models: dict[str, dict[str, Any]] = {}
        for model, versions in list(self.lifecycle.versions.items()):
            states = dict(versions)
            models[model] = {
                "ready": sorted(v for v, s in states.items() if s.state == READY),
                "routed": list(self.routed.get(model, ())),
                "failed": {v: s.reason for v, s in states.items() if s.state == FAILED},
                "waiting": self.waiting.get(model)}
        for model, why in self.waiting.items():
            models.setdefault(model, {"ready": [], "routed": [], "failed": {}, "waiting": why})
        return {"pid": os.getpid(), "models": models}

    def caught_up(self, orders: Orders) -> bool:
        """Every model routes what the orders route, or cannot (a routed version failed
        here): nothing is left to wait for."""
        for model, order in orders.items():
            route = tuple(order["route"])
            versions = dict(self.lifecycle.versions.get(model, {}))
            failed = any(versions.get(v) is not None and versions[v].state == FAILED
                         for v in route)
            if self.routed.get(model, ()) != route and not failed:
                return False
        return True


class ReplicaSync:
    """Two threads: one syncs with the coordinator every ``SYNC_INTERVAL_S`` (so a replica
    busy loading a version still shows it is alive), the other applies the latest orders
    (loading happens there, never on the request path)."""

    def __init__(self, dataplane: ReplicaDataPlane, sync: Sync) -> None:
        self.dataplane = dataplane
        self.sync = sync
        self.replica_id = f"{uuid.uuid4().hex[:8]}-{os.getpid()}"
        self.orders: Orders | None = None  # the latest answer
        self.applied: Orders | None = None  # the latest orders applied
        self._changed = threading.Condition()
        self._synced_now = threading.Event()  # an apply finished: report it at once
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failing = False

    def start(self) -> None:
        for target, name in ((self._sync_loop, "sync"), (self._apply_loop, "apply")):
            thread = threading.Thread(target=target, name=f"modelmint-replica-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def catch_up(self, timeout_s: float) -> None:
        """Start, and wait until this replica routes what the coordinator committed: a
        replica serves nothing before (its constructor calls this). Raises MintError past
        ``timeout_s``."""
        self.start()
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.applied is None or not self.dataplane.caught_up(self.applied):
                if time.monotonic() > deadline:
                    waiting = "; ".join(f"{m}: {w}" for m, w in self.dataplane.waiting.items())
                    raise MintError(f"the replica did not load the committed versions within "
                                    f"{timeout_s:g} s" + (f" ({waiting})" if waiting else ""))
                self._changed.wait(SYNC_INTERVAL_S)
        self.dataplane.load()

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                orders = self.sync(self.replica_id, self.dataplane.report())
            except Exception as exc:  # the coordinator restarting, say: try again
                if not self._failing:
                    log.warning("syncing with the rollout coordinator failed, retrying: %r",
                                exc)
                self._failing = True
            else:
                self._failing = False
                with self._changed:
                    self.orders = orders
                    self._changed.notify_all()
            self._synced_now.wait(SYNC_INTERVAL_S)
            self._synced_now.clear()

    def _apply_loop(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                while self.orders is None or self.orders is self.applied:
                    if self._stop.is_set():
                        return
                    self._changed.wait(SYNC_INTERVAL_S)
                orders = self.orders
            try:
                self.dataplane.apply(orders)
            except Exception:  # a bug: keep the replica serving what it has, say why
                log.exception("applying the rollout coordinator's orders failed")
            with self._changed:
                changed = orders != self.applied
                self.applied = orders
                self._changed.notify_all()
            # New orders make a new report (a version staged or switched): tell the coordinator
            # now rather than at the next interval. Every sync brings a new copy of the orders,
            # so waking the sync loop after applying unchanged ones made the two loops drive
            # each other without a pause: half a core each, replica and coordinator, at idle.
            if changed:
                self._synced_now.set()

    def stop(self) -> None:
        self._stop.set()
        self._synced_now.set()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(30)
