"""Replicas under faults: ``mint serve --ray``'s rolling update vs Ray Serve's own.

A local Ray cluster (``--nodes`` 3: a head and two workers on loopback), an ``s3://``
repository on a moto server behind a loopback gate (a TCP proxy that can refuse every
connection), a small MLP (FP32 [1, 256] in, 2 out), ``--replicas`` (3) replicas of each system:

- ours: ``modelmint._serve.ray_serve.deploy`` (what ``mint serve --ray`` runs), ``--poll 1``;
- peer: a plain Ray Serve deployment wrapping one ONNX Runtime session that reads its version's
  model.onnx from the bucket, updated by redeploying it with the new version (new bind
  arguments: Ray Serve replaces its replicas, its own rolling update).

The same paced closed loop drives both (``--senders`` threads; each sends, waits for the answer,
then for its next slot; together ``--load`` x the measured capacity) for ``--duration`` s under
the same faults: a new version every ``--interval`` s, one of them broken (its model.onnx is not
ONNX), one replica's process killed, the object store refusing connections for 20 s. An update
window runs from a publish until 1 s after every replica serves it (or it was rolled back);
``steady`` is outside every update and fault window. Segments alternate (``--rounds``).
Each failed request is reported (``failures``, the first 10 per system): when it was sent, in
which windows, and what the client saw.

Also one replica through Ray Serve vs a plain ``mint serve`` (the same model, from a folder),
closed loop at concurrency 2, interleaved rounds: requests/s (median, spread) and p50.

    python benchmarks/replicas.py [--duration 300] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from _common import ForeignCpu, own_tree, summary
from _mlserver import free_port, stop, wait_ready
from modelmint import _repository as store
from modelmint._repository.metadata import OPSET
from modelmint._serve.ray_serve import ReplicaOptions, deploy
from modelmint._serve.v2client import request_json, tensor_request

MODEL, WIDTH, BROKEN = "mlp", 256, b"\x00not a protobuf" * 64
ALL_FAULTS, PORT = ("update", "broken", "kill", "outage"), 0  # PORT: Ray Serve's HTTP proxy
BODY = json.dumps(request_json(tensor_request(np.full((1, WIDTH), 0.01, np.float32))))


def write_version(tmp: Path, version: int, broken: bool = False) -> None:
    """Version ``version`` of the MLP (weights seeded by it); ``broken``: not ONNX at all."""
    rng = np.random.default_rng(version)
    sizes = [(WIDTH, WIDTH)] * 3 + [(WIDTH, 2)]
    weights = [numpy_helper.from_array((rng.standard_normal(n) / 16).astype(np.float32), f"w{i}")
               for i, n in enumerate(sizes)]
    last = len(sizes) - 1
    nodes = [node for i in range(len(sizes)) for node in (
        helper.make_node("MatMul", ["input" if i == 0 else f"r{i - 1}", f"w{i}"],
                         ["prediction" if i == last else f"m{i}"]),
        *([helper.make_node("Relu", [f"m{i}"], [f"r{i}"])] if i < last else []))]
    graph = helper.make_graph(
        nodes, MODEL, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", WIDTH])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["b", 2])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    (tmp / store.ONNX_FILE).write_bytes(BROKEN if broken else model.SerializeToString())
    meta = store.ModelMetadata(name=MODEL, labels=[], architecture="mlp", task="regression",
                               preprocessing=store.TensorInputSpec(shape=[WIDTH]), version=version,
                               outputs=[store.TensorSpec("prediction", "FP32", [-1, 2])])
    (tmp / store.METADATA_FILE).write_text(json.dumps(meta.to_json()))


class ExitedCpu:
    """CPU seconds of the processes a raylet of this run started that exited while it ran, as
    last sampled (every ``every`` s). Ray reaps its exited workers without collecting their
    CPU time into its own, so :class:`ForeignCpu` counts a replaced or killed replica's whole
    life as foreign; this is how much of that figure was ours (a lower bound: up to ``every``
    s of each process's last moments is missed)."""

    def __init__(self, every: float = 0.5) -> None:
        self.last: dict[int, float] = {}
        self.exited = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(every):
            now: dict[int, float] = {}
            for pid in own_tree(os.getpid()) - {os.getpid()}:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    parent = Path(f"/proc/{fields[1]}/comm").read_text().strip()
                except OSError:
                    continue
                if parent == "raylet":  # other parents collect their children's CPU
                    now[pid] = sum(int(x) for x in fields[11:13]) / tick  # utime, stime
            self.exited += sum(cpu for pid, cpu in self.last.items() if pid not in now)
            self.last = now

    def seconds(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.exited


class Gate:
    """A loopback TCP proxy to ``port``; ``down`` refuses (closes) every connection."""

    def __init__(self, port: int) -> None:
        self.target, self.down = port, False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            try:
                if self.down:
                    raise OSError("the object store is down")
                upstream = socket.create_connection(("127.0.0.1", self.target), 2)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.down and (data := src.recv(65536)):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()


class Peer:
    """Ray Serve's own way: one ONNX Runtime session per replica, the version in its args."""

    def __init__(self, bucket: str, version: int) -> None:
        import boto3
        import onnxruntime as ort

        body = boto3.client("s3").get_object(Bucket=bucket, Key=f"models/{MODEL}/{version}/"
                                             "model.onnx")["Body"].read()
        self.session = ort.InferenceSession(body, providers=["CPUExecutionProvider"])
        self.version = version

    async def __call__(self, request: Any) -> dict[str, Any]:
        spec = (await request.json())["inputs"][0]
        x = np.asarray(spec["data"], np.float32).reshape(spec["shape"])
        out = self.session.run(["prediction"], {"input": x})[0]
        return {"model_version": str(self.version), "pid": os.getpid(),
                "outputs": [{"name": "prediction", "data": out.ravel().tolist()}]}


@dataclass
class System:
    """One system under test: where it answers, how it updates, its replicas' processes."""

    name: str
    url: str
    update: Callable[[bool], int]
    pids: Callable[[], list[int]]  # newest first
    seen: list[int] = field(default_factory=list)  # pids that answered (the peer says)


def ours(bucket: str, replicas: int) -> System:
    uri = f"s3://{bucket}/models"
    repo = store.open_repository(uri)
    repo.publish(MODEL, write_version)
    deployed = deploy(ReplicaOptions(uri), None, replicas, http_port=PORT, poll_interval_s=1.0,
                      replica_cpus=0.25, proxy_location="HeadOnly")

    def update(broken: bool) -> int:
        version = repo.publish(MODEL, lambda t, v: write_version(t, v, broken)).version
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s = deployed.status()
            live = [r for r in s["replicas"].values() if r["live"]]
            if version in s["failed"].get(MODEL, {}) or all(
                    r["models"].get(MODEL, {}).get("routed") == [version] for r in live):
                return version
            time.sleep(0.1)
        return version

    return System("ours", deployed.url, update, lambda: [
        r["pid"] for r in deployed.status()["replicas"].values() if r["live"]])


def peer(bucket: str, replicas: int) -> System:
    from ray import serve

    repo = store.open_repository(f"s3://{bucket}/models")
    seen: list[int] = []

    def run(version: int) -> None:
        app = serve.deployment(Peer, name="peer", num_replicas=replicas,
                               ray_actor_options={"num_cpus": 0.25},
                               max_constructor_retry_count=3, health_check_period_s=2,
                               logging_config={"enable_access_log": False})  # as ours
        serve.run(app.bind(bucket, version), name="peer", route_prefix="/peer")

    def redeploy(version: int) -> None:
        try:
            run(version)
        except Exception as exc:  # a broken version's redeploy fails: that is the measurement
            print(f"peer redeploy of version {version}: {exc!r}"[:300], file=sys.stderr)

    def update(broken: bool) -> int:
        version = repo.publish(MODEL, lambda t, v: write_version(t, v, broken)).version
        thread = threading.Thread(target=redeploy, args=(version,), daemon=True)
        thread.start()
        thread.join(120)
        return version

    repo.publish(MODEL, write_version)
    run(max(r.version for r in repo.versions(MODEL)))
    return System("peer", f"http://127.0.0.1:{PORT}/peer", update,
                  lambda: list(dict.fromkeys(reversed(seen))), seen)


def send(http: httpx.Client, url: str) -> tuple[int, int]:
    response = http.post(f"{url}/v2/models/{MODEL}/infer" if not url.endswith("/peer")
                         else url, content=BODY, headers={"Content-Type": "application/json"})
    response.raise_for_status()
    doc = response.json()
    return int(doc["model_version"]), int(doc.get("pid", 0))


def closed_loop(url: str, seconds: float, senders: int) -> list[float]:
    """Each sender sends, waits for the answer, sends again; every request's latency."""
    latencies: list[float] = []
    until = time.monotonic() + seconds

    def loop() -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < until:
                sent = time.monotonic()
                send(http, url)
                latencies.append(time.monotonic() - sent)
    threads = [threading.Thread(target=loop) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def segment(system: System, gate: Gate, rate: float, seconds: float, interval: float,
            senders: int) -> dict[str, Any]:
    """Paced closed loop for ``seconds`` under the faults (see the module docstring)."""
    records: list[tuple[float, float, bool, int]] = []  # sent, latency, ok, version
    errors: list[tuple[float, str]] = []  # sent, what the client saw
    windows: list[tuple[str, float, float]] = []
    broken: list[int] = []
    start = time.monotonic()
    stop_at = start + seconds

    def sender(i: int) -> None:
        next_at = start + i / rate
        with httpx.Client(timeout=30) as http:
            while (now := time.monotonic()) < stop_at:
                if now < next_at:
                    time.sleep(next_at - now)
                sent = time.monotonic()
                try:
                    version, pid = send(http, system.url)
                    records.append((sent, time.monotonic() - sent, True, version))
                    if pid and (not system.seen or system.seen[-1] != pid):
                        system.seen.append(pid)
                except Exception as exc:
                    records.append((sent, time.monotonic() - sent, False, -1))
                    detail = exc.response.text[:200] if isinstance(
                        exc, httpx.HTTPStatusError) else ""
                    errors.append((sent, f"{exc!r} {detail}".strip()[:300]))
                next_at = max(next_at + senders / rate, time.monotonic())

    def faults() -> None:
        plan = sorted([(start + k * interval, "update") for k in range(1, int(seconds / interval))]
                      + [(start + seconds / 3 + 1, "broken"), (start + seconds / 2, "kill"),
                         (start + 2 * seconds / 3, "outage")])
        for at, kind in plan:
            time.sleep(max(0.0, at - time.monotonic()))
            began = time.monotonic()
            if kind in ("update", "broken"):
                version = system.update(kind == "broken")
                if kind == "broken":
                    broken.append(version)
            elif kind == "kill":
                for pid in system.pids():  # the newest that is still there
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        break
                time.sleep(5)
            else:
                gate.down = True
                time.sleep(20)
                gate.down = False
            windows.append((kind, began, time.monotonic() + 1.0))

    threads = [*(threading.Thread(target=sender, args=(i,)) for i in range(senders)),
               threading.Thread(target=faults, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:  # the faults too: none may spill into the next segment
        t.join()

    def inside(at: float, kinds: tuple[str, ...]) -> bool:
        return any(k in kinds and a <= at <= b for k, a, b in windows)

    failures = [{"at_s": round(at - start, 1), "error": error,
                 "during": [k for k, a, b in windows if a <= at <= b] or ["steady"]}
                for at, error in errors]
    return {"records": records, "broken_served": sum(r[3] in broken for r in records),
            "failures": failures,
            "steady": [r[1] for r in records if r[2] and not inside(r[0], ALL_FAULTS)],
            "update": [r[1] for r in records if r[2] and inside(r[0], ("update", "broken"))]}


def summarize(parts: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    def p99(key: str) -> float:
        values = [x for p in parts for x in p[key]]
        return round(float(np.percentile(values, 99)) * 1e3, 2) if values else float("nan")

    records = [r for p in parts for r in p["records"]]
    return {"replicas": replicas, "requests": len(records),
            "failed": sum(not r[2] for r in records), "steady_p99_ms": p99("steady"),
            "failures": [f for p in parts for f in p["failures"]][:10],
            "update_p99_ms": p99("update"),
            "broken_served": sum(p["broken_served"] for p in parts)}


def one_replica(work: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """One replica through Ray Serve vs a plain ``mint serve``, interleaved rounds."""
    folder = work / "folder"
    store.ModelRepository(folder).publish(MODEL, write_version)
    deployed = deploy(ReplicaOptions(str(folder)), None, 1, app_name="one", route_prefix="/one",
                      http_port=PORT, replica_cpus=0.25, proxy_location="HeadOnly")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "modelmint.cli", "serve", str(folder),
                             "--http-port", str(port), "--grpc-port", "-1", "--metrics-port",
                             "-1"], stdout=subprocess.DEVNULL, start_new_session=True)
    urls = {"ray_serve": deployed.url, "mint_serve": f"http://127.0.0.1:{port}"}
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in urls}
    try:
        wait_ready(urls["mint_serve"], proc, 180, model=MODEL)
        for r in range(rounds):
            for name in list(urls) if r % 2 == 0 else list(urls)[::-1]:
                latencies = closed_loop(urls[name], seconds, 2)
                results[name].append((len(latencies) / seconds,
                                      float(np.median(latencies)) * 1e3))
    finally:
        stop(proc)
        deployed.shutdown()
    return {n: {"rps": summary([r[0] for r in rs]), "p50_ms": summary([r[1] for r in rs])}
            for n, rs in results.items()}


def main() -> None:
    global PORT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, kind, default in (("--duration", float, 300.0), ("--interval", float, 30.0),
                                ("--rounds", int, 2), ("--replicas", int, 3),
                                ("--load", float, 0.6), ("--senders", int, 4), ("--nodes", int, 3),
                                ("--one-replica-seconds", float, 10.0)):
        parser.add_argument(flag, type=kind, default=default)  # --duration: per system
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="replicas-"))
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(moto_port := free_port())], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    gate = Gate(moto_port)
    # Every Ray node started below inherits these: the replicas read the bucket through the gate.
    os.environ.update({"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{gate.port}",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                       "MODELMINT_CACHE_DIR": str(work / "cache")})
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ray_cluster import local_cluster

    try:
        while socket.socket().connect_ex(("127.0.0.1", moto_port)) != 0:
            time.sleep(0.1)  # moto starting
        import boto3

        buckets = {"ours": "ours-models", "peer": "peer-models"}
        for bucket in buckets.values():
            boto3.client("s3").create_bucket(Bucket=bucket)
        PORT = free_port()
        with local_cluster(workers=args.nodes - 1):
            foreign, exited = ForeignCpu(), ExitedCpu()
            systems = [ours(buckets["ours"], args.replicas)]
            if not args.no_peer:
                systems.append(peer(buckets["peer"], args.replicas))
            rates = {s.name: args.load * len(closed_loop(s.url, 5.0, args.senders)) / 5.0
                     for s in systems}
            parts: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
            for r in range(args.rounds):
                for s in systems if r % 2 == 0 else systems[::-1]:
                    print(f"round {r + 1}: {s.name} at {rates[s.name]:.1f} req/s",
                          file=sys.stderr)
                    parts[s.name].append(segment(s, gate, rates[s.name],
                                                 args.duration / args.rounds, args.interval,
                                                 args.senders))
            result = summarize(parts["ours"], args.replicas)
            result["peer"] = (summarize(parts["peer"], args.replicas) if "peer" in parts
                              else {"not_done": "--no-peer"})
            result["one_replica"] = one_replica(work, max(2, args.rounds),
                                                args.one_replica_seconds)
            result["foreign_cpu_s"] = round(foreign.seconds(), 1)
            result["exited_own_cpu_s"] = round(exited.seconds(), 1)
        report(result)
        if args.json:
            print(json.dumps(result))
    finally:
        moto.kill()


def report(result: dict[str, Any]) -> None:
    print(f"{'':16}{'ours':>12}{'peer':>12}", file=sys.stderr)
    for key in ("requests", "failed", "steady_p99_ms", "update_p99_ms", "broken_served"):
        print(f"{key:16}{result[key]:>12}{result['peer'].get(key, '-'):>12}", file=sys.stderr)
    for system, failures in (("ours", result["failures"]),
                             ("peer", result["peer"].get("failures", []))):
        for f in failures:
            print(f"failed ({system}) at {f['at_s']} s during {'/'.join(f['during'])}: "
                  f"{f['error']}", file=sys.stderr)
    for name, r in result["one_replica"].items():
        print(f"one replica, {name}: {r['rps']['median']:.1f} req/s (spread "
              f"{r['rps']['spread']:.1f}), p50 {r['p50_ms']['median']:.2f} ms", file=sys.stderr)
    print(f"foreign CPU during the run: {result['foreign_cpu_s']} s, of which "
          f"{result['exited_own_cpu_s']} s were this run's own exited processes (Ray's "
          "replaced and killed replicas)", file=sys.stderr)


if __name__ == "__main__":
    main()
