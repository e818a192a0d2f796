"""The one data plane behind every transport (HTTP V2 and TF Serving REST, gRPC; the in-process
client too).

It owns the served versions (through :class:`.lifecycle.Lifecycle`) and answers every V2
endpoint; request semantics live in :class:`.model.LoadedModel`, execution in an executor
(:mod:`.executors`: a worker process per version in the server). Transports only translate
wire formats (see :mod:`.codec`, :mod:`.tfserving`, :mod:`.grpc`) and map
:class:`~modelmint.errors.MintError` to a status.

This module must not import torch: a serving process needs only onnxruntime, Pillow and NumPy.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import re
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._repository import ONNX_FILE, ModelConfig, ModelRepository, require_repo_dir
from .._settings import DEFAULT_DECODE_MEMORY, DEFAULT_DECODE_THREADS
from ..errors import DeadlineExceeded, InvalidInput, ModelNotReady, NotFound, RepositoryError
from .batching import DynamicBatcher, request_timeout_s
from .decoding import DecodeBudget, decode_pool, started_pool
from .executors import Executor, ProcessExecutor, ThreadExecutor
from .gaps import LOADERS
from .instances import GAVE_UP, InstancePool
from .lifecycle import FAILED, READY, SERVING, UNLOADED, Lifecycle, Servable
from .metrics import Metrics, observed
from .model import DEFAULT_MAX_BATCH_SIZE, PLATFORM, LoadedModel
from .types import InferRequest, InferResponse, Outputs

log = logging.getLogger("modelmint._serve")

SERVER_NAME = "modelmint"
EXTENSIONS = ["classification", "binary_tensor_data", "model_repository"]
__all__ = ["DEFAULT_MAX_BATCH_SIZE", "PLATFORM", "DataPlane", "LoadedModel", "parse_version",
           "server_version"]
_VERSION = re.compile(r"[0-9]{1,18}")  # int() alone would also accept " 1", "1_0", "+1"


def server_version() -> str:
    try:
        return importlib.metadata.version("modelmint")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def parse_version(text: str | None, where: str) -> int | None:
    """A model version as it arrives on the wire (URL segment, gRPC field); None or "" means
    the served version. ``where`` names the field for the error message."""
    if not text:
        return None
    if not _VERSION.fullmatch(text):
        raise InvalidInput(f"model version {text!r} {where} is not a non-negative integer")
    return int(text)


class DataPlane:
    """Serves the versions each model's policy selects and answers V2 requests.

    ``isolation="process"`` (the server) runs every version's session in worker processes of
    its own (``instances`` of them, supervised: see :mod:`.instances`), loaded at idle priority
    (see :mod:`.worker`); ``"thread"`` (the in-process SDK, and tests that need no update
    isolation) runs it on this process's thread pool.
    """

    def __init__(self, repo: str | Path | ModelRepository, *,
                 models: Collection[str] | None = None,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 workers: int | None = None,
                 isolation: Literal["thread", "process"] = "thread",
                 arena: bool = True, jemalloc: bool = False,
                 metrics: Metrics | None = None,
                 decode_memory: int = DEFAULT_DECODE_MEMORY,
                 decode_threads: int = DEFAULT_DECODE_THREADS) -> None:
        self.repo = repo if isinstance(repo, ModelRepository) else require_repo_dir(repo)
        self.metrics = metrics if metrics is not None else Metrics()  # /metrics and /stats
        collector = getattr(self.repo, "collector", None)  # s3:// repositories count requests
        if collector is not None:
            self.metrics.registry.register(collector())
        self.only = None if models is None else set(models)
        self.max_batch_size = max_batch_size
        self.isolation = isolation
        self.arena, self.jemalloc = arena, jemalloc
        self._ready = False
        # Bounded and owned by us (not the event loop's default): caps memory and CPU
        # oversubscription, since every session already uses all cores for one request.
        self._executor = started_pool(workers or max(2, os.cpu_count() or 1), "infer")
        # Decoding has a pool and a memory budget of its own (see .decoding): N concurrent
        # large images cannot multiply the memory, whatever the number of cores.
        self.decode_budget = DecodeBudget(decode_memory)
        self._decode_pool = decode_pool(decode_threads)
        self.lifecycle = Lifecycle(self.repo, self._build, self.only,
                                   lambda: getattr(self, "metrics", None))

    # --- lifecycle -------------------------------------------------------------------------

    def _build(self, s: Servable) -> None:
        s.model = LoadedModel(s.ref, self.max_batch_size, self.decode_budget)
        # An in-process session cannot die apart from the server and already runs concurrent
        # requests: more instances are for worker processes.
        count = s.config.instances if self.isolation == "process" else 1
        s.executor = InstancePool(
            f"model {s.ref.model!r} version {s.version}", count,
            lambda idle, on_exit: self._spawn(s, idle, on_exit), stateless=s.stateless,
            on_state=lambda state, reason: self.lifecycle.instances_changed(s, state, reason))

    def _spawn(self, s: Servable, idle: bool, on_exit: Callable[[str], None]) -> Executor:
        """One executor for ``s``, its graph checked against the version's metadata."""
        assert s.model is not None
        onnx = s.ref.path / ONNX_FILE
        executor: Executor
        if self.isolation == "process":
            executor = ProcessExecutor(
                onnx, s.model.slot_crop, f"model {s.ref.model!r} version {s.version}",
                outputs=s.model.output_names, arena=self.arena, jemalloc=self.jemalloc,
                idle=idle, on_exit=on_exit)
        else:
            executor = ThreadExecutor(onnx, self._executor, s.model.output_names)
        try:
            s.model.check_io(*executor.io())
        except BaseException:
            executor.close()
            raise
        return executor

    def load(self) -> None:
        """Load what every model's version policy selects; a model that fails is logged and
        skipped (its state says why)."""
        if self._ready:
            return
        for name in self.lifecycle.models_to_watch():
            self.lifecycle.reconcile(name)
        self._ready = True

    def start_polling(self, interval_s: float) -> None:
        """Re-read the repository every ``interval_s`` seconds (0: only the repository API)."""
        self.lifecycle.start_polling(interval_s)

    def load_model(self, model: str, version: int | None = None) -> LoadedModel:
        """Serve one version (latest if None) whatever the policy says; raises on failure."""
        ref = self.repo.version(model, version)
        s = Servable(ref, ModelConfig.load(self.repo.root / model))
        self.lifecycle.load_version(s)
        if s.state != READY or s.model is None:
            raise RepositoryError(s.reason)
        return s.model

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.lifecycle.index(ready_only)

    def repository_load(self, model: str) -> None:
        self.lifecycle.load(model)

    def repository_unload(self, model: str) -> None:
        self.lifecycle.unload(model)

    def close(self) -> None:
        self.lifecycle.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def models(self) -> dict[str, LoadedModel]:
        """The latest served version of each model."""
        return {name: self._latest(served) for name, served in self.lifecycle.served.items()}

    @staticmethod
    def _latest(served: dict[int, Servable]) -> LoadedModel:
        model = served[max(served)].model
        assert model is not None
        return model

    # --- V2 endpoints ----------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the server is not ready, or None. It is ready once startup loading has finished
        and while every model it should serve has a READY version (Triton's strict
        readiness): every model it has tried to load, or whose config.json it could not
        read, unless the repository API unloaded it. No paths: probes need no credentials."""
        if not self._ready:
            return "the server is still loading models"
        lifecycle = self.lifecycle
        expected = {m for m, versions in list(lifecycle.versions.items())
                    if any(s.state != UNLOADED for s in list(versions.values()))}
        missing = []
        for model in sorted((expected | set(lifecycle.errors)) - lifecycle.unloaded):
            versions = dict(lifecycle.versions.get(model, {}))
            if not any(s.state == READY for s in versions.values()):
                states = ", ".join(f"version {v} is {s.state.lower()}"
                                   for v, s in sorted(versions.items()) if s.state != UNLOADED)
                missing.append(f"model {model!r} has no ready version "
                               f"({states or 'its config.json is invalid'})")
        return "; ".join(missing) if missing else None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        meta = self.model(model, version).v2_metadata()
        if version is None:  # every version served, as Triton lists them
            meta["versions"] = [str(v) for v in self.lifecycle.served.get(model, {})]
        return meta

    def model_ready(self, model: str, version: int | None = None) -> bool:
        """True when READY; False when known but not ready; NotFound when unknown."""
        return self.model_readiness(model, version)[0]

    def model_readiness(self, model: str, version: int | None = None) -> tuple[bool, str]:
        """(ready, why not, with the version's reason); NotFound when unknown."""
        try:
            s = self.servable(model, version)
        except ModelNotReady as exc:
            known = self._known(model, version)
            if known is None or known.state == UNLOADED or not known.reason:
                return False, exc.message
            return False, self._not_ready(known, self._public(known.reason))
        if s.state != READY:
            return False, self._not_ready(s, self._public(s.reason))
        return True, ""

    def _public(self, reason: str) -> str:
        """``reason`` with paths relative to the repository: the server's layout stays its
        own."""
        return reason.replace(f"{self.repo.root}/", "").replace(str(self.repo.root), ".")

    @staticmethod
    def _not_ready(s: Servable, reason: str = "") -> str:
        """Why ``s`` takes no requests; its ``reason`` only where given (readiness answers
        give it, inference errors leave it to the server log and the repository index)."""
        if s.state == FAILED and s.reason.startswith(GAVE_UP):
            why = reason or GAVE_UP  # the reason says it all
        else:
            why = "it failed to load" if s.state == FAILED else f"it is {s.state.lower()}"
            why += f": {reason}" if reason else ""
        if s.state == FAILED and not reason:
            why += " (see the server log or the repository index)"
        return f"model {s.ref.model!r} version {s.version} is not ready: {why}"

    def _known(self, model: str, version: int | None) -> Servable | None:
        """The version asked for (None: the latest) among all the lifecycle knows."""
        # A copy (atomic under the GIL): the loader thread may be adding a version right now.
        versions = dict(self.lifecycle.versions.get(model, {}))
        if version is not None:
            return versions.get(version)
        return versions[max(versions)] if versions else None

    def model(self, model: str, version: int | None = None) -> LoadedModel:
        loaded = self.servable(model, version).model
        assert loaded is not None
        return loaded

    def servable(self, model: str, version: int | None = None) -> Servable:
        served = self.lifecycle.served.get(model)
        if served and version is None:
            return served[max(served)]
        if served and version in served:
            return served[version]
        known = self._known(model, version)
        if known is not None and (not served or known.state != UNLOADED):
            raise ModelNotReady(self._not_ready(known), retry_after=1.0)
        if served:
            serving = ", ".join(str(v) for v in served)
            plural = "s" if len(served) > 1 else ""
            config = served[max(served)].config
            on_disk = any(r.version == version for r in self.repo.versions(model))
            why = (f": its version policy ({config.version_policy.describe()}) does not select "
                   "it" if on_disk and (known is None or known.state == UNLOADED) else "")
            raise NotFound(f"model {model!r} version {version} is not loaded{why} (this server "
                           f"serves version{plural} {serving})")
        if model in self.lifecycle.errors:
            raise ModelNotReady(f"model {model!r} is not ready: its config.json is invalid "
                                "(see the server log or the repository index)")
        if not self._ready:
            raise ModelNotReady("the server is still loading models")
        version_text = "" if version is None else f" version {version}"
        raise NotFound(f"unknown model {model!r}{version_text}; serving "
                       f"{sorted(self.lifecycle.served) or 'no models'}")

    @observed  # the one place requests are counted and timed, for every transport
    async def infer(self, model: str, version: int | None,
                    request: InferRequest) -> InferResponse:
        arrived = time.monotonic()
        s = self._acquire(model, version)  # cheap: unknown models fail without a thread hop
        LOADERS.enter()  # loading workers wait for the next gap
        try:
            assert s.model is not None
            loop = asyncio.get_running_loop()
            batch = await loop.run_in_executor(self._decode_pool, s.model.prepare, request)
            batching = s.config.dynamic_batching
            timeout = request_timeout_s(request.parameters, batching)
            if timeout is not None:
                # The timeout runs from arrival: decoding counts. Past it, do not even start.
                left = timeout - (time.monotonic() - arrived)
                if left <= 0:
                    raise DeadlineExceeded(
                        f"model {model!r} version {s.version}: the request did not start within "
                        f"its timeout of {timeout * 1e3:g} ms")
                timeout = left
            if batching is not None:
                if s.batcher is None:
                    assert s.executor is not None
                    # One execution at a time per instance: each already uses every core.
                    s.batcher = DynamicBatcher(lambda b: self._run(s, b), batching,
                                               f"{model}/{s.version}", s.executor.size)
                    s.loop = loop
                outputs, timings = await s.batcher.submit(batch, timeout)
            else:
                started = time.perf_counter()
                outputs = await self._run(s, batch, timeout)
                timings = {"queue_s": 0.0, "compute_s": time.perf_counter() - started,
                           "batch_size": float(batch.shape[0])}
            if s.model.detector is not None:
                # Box selection (NMS) takes milliseconds: off the event loop, which every other
                # request needs meanwhile. A classifier's answer is cheaper than the hop.
                response = await loop.run_in_executor(self._decode_pool, s.model.respond,
                                                      request, outputs)
            else:
                response = s.model.respond(request, outputs)
            response.timings = timings
            return response
        finally:
            s.inflight -= 1
            LOADERS.leave()

    def _acquire(self, model: str, version: int | None) -> Servable:
        """The servable, counted in flight so draining waits for this request."""
        while True:
            s = self.servable(model, version)
            s.inflight += 1
            # The loader marks DRAINING before it waits for inflight == 0: if it got there
            # between the lookup and the increment, look again (the new version is served).
            if s.state in SERVING:  # RESTARTING: its requests wait for the restart
                return s
            s.inflight -= 1

    async def _run(self, s: Servable, batch: np.ndarray,
                   timeout: float | None = None) -> Outputs:
        executor = s.executor
        if executor is None:
            raise ModelNotReady(f"model {s.ref.model!r} version {s.version} is not ready: "
                                f"{s.reason or 'it is unloaded'}")
        future = asyncio.wrap_future(executor.run(batch))
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"model {s.ref.model!r} version {s.version}: the request "
                                   f"did not finish within its timeout of "
                                   f"{timeout * 1e3:g} ms") from None

    def infer_sync(self, model: str, version: int | None,
                   request: InferRequest) -> InferResponse:
        """Same semantics as :meth:`infer`, on the calling thread (in-process SDK use)."""
        s = self.servable(model, version)
        assert s.model is not None and s.executor is not None
        outputs = s.executor.run(s.model.prepare(request)).result()
        return s.model.respond(request, outputs)
