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
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._repository import ONNX_FILE, ModelConfig, ModelRepository, require_repo_dir
from ..errors import DeadlineExceeded, InvalidInput, ModelNotReady, NotFound, RepositoryError
from .batching import DynamicBatcher, request_timeout_s
from .executors import ProcessExecutor, ThreadExecutor
from .lifecycle import FAILED, READY, UNLOADED, Lifecycle, Servable
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

    ``isolation="process"`` (the server) runs every version's session in a worker process of
    its own, loaded at idle priority (see :mod:`.worker`); ``"thread"`` (the in-process SDK,
    and tests that need no update isolation) runs it on this process's thread pool.
    """

    def __init__(self, repo: str | Path | ModelRepository, *,
                 models: Collection[str] | None = None,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 workers: int | None = None,
                 isolation: Literal["thread", "process"] = "thread",
                 arena: bool = True, jemalloc: bool = False,
                 metrics: Metrics | None = None) -> None:
        self.repo = repo if isinstance(repo, ModelRepository) else require_repo_dir(repo)
        self.metrics = metrics if metrics is not None else Metrics()  # /metrics and /stats
        self.only = None if models is None else set(models)
        self.max_batch_size = max_batch_size
        self.isolation = isolation
        self.arena, self.jemalloc = arena, jemalloc
        self._ready = False
        # Bounded and owned by us (not the event loop's default): caps memory and CPU
        # oversubscription, since every session already uses all cores for one request.
        self._executor = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 1),
                                            thread_name_prefix="modelmint-infer")
        self.lifecycle = Lifecycle(self.repo, self._build, self.only,
                                   lambda: getattr(self, "metrics", None))

    # --- lifecycle -------------------------------------------------------------------------

    def _build(self, s: Servable) -> None:
        s.model = LoadedModel(s.ref, self.max_batch_size)
        onnx = s.ref.path / ONNX_FILE
        if self.isolation == "process":
            what = f"model {s.ref.model!r} version {s.version}"
            s.executor = ProcessExecutor(
                onnx, s.model.slot_crop, what, outputs=s.model.output_names,
                arena=self.arena, jemalloc=self.jemalloc,
                on_exit=lambda reason: self.lifecycle.worker_died(s, reason))
        else:
            s.executor = ThreadExecutor(onnx, self._executor, s.model.output_names)
        s.model.check_io(*s.executor.io())

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
        """Ready once startup loading has finished (broken models are skipped, not waited on)."""
        return self._ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        meta = self.model(model, version).v2_metadata()
        if version is None:  # every version served, as Triton lists them
            meta["versions"] = [str(v) for v in self.lifecycle.served.get(model, {})]
        return meta

    def model_ready(self, model: str, version: int | None = None) -> bool:
        """True when served; False when known but not servable; NotFound when unknown."""
        try:
            self.model(model, version)
        except ModelNotReady:
            return False
        return True

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
        # A copy (atomic under the GIL): the loader thread may be adding a version right now.
        versions = dict(self.lifecycle.versions.get(model, {}))
        known = versions.get(version) if version is not None else (
            versions[max(versions)] if versions else None)
        if known is not None and (not served or known.state != UNLOADED):
            state = ("it failed to load (see the server log or the repository index)"
                     if known.state == FAILED else f"it is {known.state.lower()}")
            raise ModelNotReady(f"model {model!r} version {known.version} is not ready: {state}")
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
        try:
            assert s.model is not None
            loop = asyncio.get_running_loop()
            batch = await loop.run_in_executor(self._executor, s.model.prepare, request)
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
                    s.batcher = DynamicBatcher(lambda b: self._run(s, b), batching,
                                               f"{model}/{s.version}")
                    s.loop = loop
                outputs, timings = await s.batcher.submit(batch, timeout)
            else:
                started = time.perf_counter()
                outputs = await self._run(s, batch, timeout)
                timings = {"queue_s": 0.0, "compute_s": time.perf_counter() - started,
                           "batch_size": float(batch.shape[0])}
            response = s.model.respond(request, outputs)
            response.timings = timings
            return response
        finally:
            s.inflight -= 1

    def _acquire(self, model: str, version: int | None) -> Servable:
        """The servable, counted in flight so draining waits for this request."""
        while True:
            s = self.servable(model, version)
            s.inflight += 1
            # The loader marks DRAINING before it waits for inflight == 0: if it got there
            # between the lookup and the increment, look again (the new version is served).
            if s.state == READY:
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
