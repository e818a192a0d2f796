"""Latency during hot updates: ``mint serve --poll`` vs MLServer 1.7.1, same ONNX model.

MobileNetV2 (torchvision, random weights, 2 classes) is exported once with
``modelmint._search.publish.publish_classifier`` (with a warm-up image); every
``--interval`` seconds a copy of it is published as a new version
(``ModelRepository.publish``, an atomic rename) and the server must switch to it.
MLServer gets the same model file copied to a new path and a
``POST /v2/repository/models/NAME/load`` (its reload: load the new one, then swap).

Load is open loop at a constant rate (``--load`` x the server's measured capacity, default
0.6); latency is measured from each request's *scheduled* send time, so a stall also counts for
the requests that could not be sent during it. An update window is from the new version's
appearance until 1 s after the old version is unloaded (MLServer: until 1 s after its load call
returns); everything else (after a 2 s warm-up) is steady state. Servers are measured in
alternating segments (``--rounds``) so drift on a shared machine hits both alike.

    python benchmarks/hot_update.py [--duration 330] [--interval 10] [--rounds 2] [--runs 3]
        [--json]

Our server runs with ``--log-level info``: its ``phases`` lines break each update window
down phase by phase (``_phases.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from _common import own_tree
from _mlserver import MODEL_NAME, free_port, start_mlserver, stop
from _phases import breakdown, read_steps
from _phases import report as report_phases
from _publish import Publisher, publish_copy
from serving_throughput import Sender, grpc_sender, http_sender, start_ours

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera" / "val"


def export(root: Path) -> Path:
    """MobileNetV2 published once (torch only here, never during the measurement)."""
    import torchvision

    from modelmint._data.preprocess import ImageSpec
    from modelmint._repository import ModelMetadata, ModelRepository
    from modelmint._search.publish import publish_classifier

    images = sorted(SAMPLE.glob("*/*.jpg"))[:1]
    model = torchvision.models.mobilenet_v2(num_classes=2).eval()
    meta = ModelMetadata(name=MODEL_NAME, labels=["ants", "bees"], architecture="mobilenet_v2",
                         preprocessing=ImageSpec())
    return publish_classifier(ModelRepository(root), model, meta, {},
                         [p.read_bytes() for p in images]).path


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds(root_pid: int) -> float:
    """CPU seconds of our process tree, reaped children (exited workers) included."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in own_tree(root_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / tick
    return total


def foreign_since(before: tuple[float, float]) -> float:
    """CPU seconds used by processes not ours since ``before`` = (busy, own): short-lived ones
    too (other people's test runs), which a per-process scan would miss."""
    return (busy_cpu_seconds() - before[0]) - (own_cpu_seconds(os.getpid()) - before[1])


class Server:
    """One server under test: its URL and how to make it update."""

    def __init__(self, name: str, url: str, update: Callable[[], float | None],
                 sender: Callable[[], Sender]) -> None:
        self.name, self.url, self.update, self.sender = name, url, update, sender


def ours_update(publisher: Publisher, serving: int) -> Callable[[], float | None]:
    """Publish a new version and return once the one ``serving`` is unloaded, with when the
    publish itself was over (our own work in the window, before the server has any to do).

    Nothing here asks the server, nor reads its log: an HTTP client made in this process
    loads its TLS certificates with the GIL held, and asking for the repository index every
    few ms would add load of our own to the window. The publisher process waits instead."""
    current = [serving]

    def update() -> float | None:
        current[0], published = publisher(current[0])
        return published
    return update


def mlserver_update(model_dir: Path, onnx: Path, url: str) -> Callable[[], float | None]:
    counter = [0]
    http = httpx.Client(timeout=120)  # made once: see ours_update

    def update() -> float | None:
        counter[0] += 1
        copy = model_dir / f"model-{counter[0]}.onnx"
        os.link(onnx, copy)  # as for ours: see publish_copy
        settings_path = model_dir / MODEL_NAME / "model-settings.json"
        settings = json.loads(settings_path.read_text())
        settings["parameters"]["uri"] = str(copy)
        settings_path.write_text(json.dumps(settings, indent=2))
        response = http.post(f"{url}/v2/repository/models/{MODEL_NAME}/load")
        response.raise_for_status()
        return None
    return update


def capacity(server: Server, seconds: float = 5.0, concurrency: int = 2) -> float:
    """Closed-loop requests/s: what the open-loop rate is a fraction of."""
    done = [0] * concurrency
    stop_at = time.monotonic() + seconds

    def run(i: int) -> None:
        send = server.sender()
        while time.monotonic() < stop_at:
            send()
            done[i] += 1
    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def segment(server: Server, rate: float, seconds: float, interval: float,
            senders: int = 8) -> dict[str, Any]:
    """Open loop at ``rate`` for ``seconds`` with an update every ``interval``."""
    schedule: queue.Queue[float | None] = queue.Queue()
    records: list[tuple[float, float, bool]] = []  # scheduled, latency, ok
    windows: list[tuple[float, float]] = []
    published: list[float | None] = []  # when each update's publish was over
    start = time.perf_counter() + 0.5

    def send_loop() -> None:
        send = server.sender()
        while (at := schedule.get()) is not None:
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                send()
                ok = True
            except Exception:
                ok = False
            records.append((at, time.perf_counter() - at, ok))

    def update_loop() -> None:
        next_at = start + interval
        while next_at < start + seconds - 2:
            time.sleep(max(0.0, next_at - time.perf_counter()))
            began = time.perf_counter()
            published.append(server.update())
            windows.append((began, time.perf_counter() + 1.0))
            next_at += interval

    threads = [threading.Thread(target=send_loop) for _ in range(senders)]
    updater = threading.Thread(target=update_loop)
    # This process's own pauses would count as the server's latency: a full collection walks
    # every record so far (tens of thousands of tuples) with the GIL held.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for t in [*threads, updater]:
            t.start()
        count = int(seconds * rate)
        for i in range(count):
            schedule.put(start + i / rate)
        for _ in threads:
            schedule.put(None)
        for t in [*threads, updater]:
            t.join()
    finally:
        gc.enable()
        gc.unfreeze()
    steady = [lat for at, lat, ok in records if ok and at > start + 2
              and not any(a <= at <= b for a, b in windows)]
    update = [lat for at, lat, ok in records if ok and any(a <= at <= b for a, b in windows)]
    return {"steady": steady, "update": update, "failed": sum(not ok for *_, ok in records),
            "requests": len(records), "updates": len(windows), "records": records,
            "windows": windows, "published": published}


def summarize(parts: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    steady = np.array([x for p in parts for x in p["steady"]]) * 1e3
    update = np.array([x for p in parts for x in p["update"]]) * 1e3

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else float("nan")

    return {"rate_rps": round(rate, 1), "updates": sum(p["updates"] for p in parts),
            "steady_p50_ms": pct(steady, 50), "steady_p99_ms": pct(steady, 99),
            "steady_p999_ms": pct(steady, 99.9),
            "steady_max_ms": float(steady.max()) if steady.size else float("nan"),
            "update_p50_ms": pct(update, 50), "update_p99_ms": pct(update, 99),
            "update_p999_ms": pct(update, 99.9),
            "update_max_ms": float(update.max()) if update.size else float("nan"),
            "failed": sum(p["failed"] for p in parts),
            "requests": sum(p["requests"] for p in parts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds per server and run")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1,
                        help="whole runs (every server, every round): the ratios' median and "
                             "spread over them")
    parser.add_argument("--load", type=float, default=0.6)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests/s for every server instead of --load x its capacity "
                             "(capacity measured on a shared box swings 2x between runs)")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hot-update-"))
    procs = []
    closers: list[Callable[[], None]] = []
    try:
        source = export(work / "source")
        repo = work / "repo"
        first = publish_copy(repo, source)
        log = work / "ours.log"
        proc, url = start_ours(repo, log, "--metrics-port", "-1", "--poll", "0.5",
                               "--log-level", "info")
        procs.append(proc)
        publisher = Publisher(repo, source, log)
        closers.append(publisher.close)
        # Each server with the client its users would use (see serving_throughput.py): ours
        # tritonclient.http with binary tensors; MLServer (no binary HTTP extension) gRPC.
        servers = [Server("ours", url, ours_update(publisher, first),
                          lambda: http_sender(url))]
        if not args.no_mlserver:
            port, grpc_port = free_port(), free_port()
            model_dir = work / "mlserver"
            procs.append(start_mlserver(model_dir, port, grpc_port, 0, os.cpu_count() or 1,
                                        onnx=source / "model.onnx", log=work / "mlserver.log"))
            murl = f"http://127.0.0.1:{port}"
            servers.append(Server("mlserver", murl,
                                  mlserver_update(model_dir, source / "model.onnx", murl),
                                  lambda: grpc_sender(f"127.0.0.1:{grpc_port}")))
        rates = {s.name: args.rate or args.load * capacity(s) for s in servers}
        offset = time.time() - time.perf_counter()  # the server logs wall-clock times
        runs = []
        for run in range(args.runs):
            foreign_start = (busy_cpu_seconds(), own_cpu_seconds(os.getpid()))
            parts: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
            for r in range(args.rounds):
                for s in servers if r % 2 == 0 else servers[::-1]:
                    print(f"run {run + 1}, round {r + 1}: {s.name} at {rates[s.name]:.1f} "
                          "req/s", file=sys.stderr)
                    parts[s.name].append(segment(s, rates[s.name],
                                                 args.duration / args.rounds, args.interval))
            foreign = foreign_since(foreign_start)
            result: dict[str, Any] = {name: summarize(p, rates[name])
                                      for name, p in parts.items()}
            result.setdefault("mlserver", {"not_done": "--no-mlserver"})
            steps = read_steps(log)
            result["ours"]["phases"] = breakdown(
                [r for p in parts["ours"] for r in p["records"]],
                [w for p in parts["ours"] for w in p["windows"]],
                [x for p in parts["ours"] for x in p["published"]], steps, offset)
            result["foreign_cpu_s"] = round(foreign, 1)
            print(f"--- run {run + 1} of {args.runs}")
            report(result, foreign)
            report_phases(result["ours"]["phases"])
            runs.append(result)
        summary = across_runs(runs)
        if args.json:
            print(json.dumps(summary))
    finally:
        for close in closers:
            close()
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def across_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each server's update/steady ratios per run, with their median and spread."""
    out: dict[str, Any] = {"runs": runs}
    print(f"--- over {len(runs)} run(s): median [min, max]")
    for name in ("ours", "mlserver"):
        rows = [r[name] for r in runs if "steady_p99_ms" in r[name]]
        if not rows:
            continue
        ratios = {
            "p99_ratio": [v["update_p99_ms"] / v["steady_p99_ms"] for v in rows],
            "p999_ratio": [v["update_p999_ms"] / v["steady_p999_ms"] for v in rows]}
        summary = {key: {"median": round(float(np.median(values)), 3),
                         "min": round(min(values), 3), "max": round(max(values), 3)}
                   for key, values in ratios.items()}
        summary["updates_per_run"] = [v["updates"] for v in rows]
        summary["failed"] = sum(v["failed"] for v in rows)
        out[name] = summary
        print(f"{name}: update/steady p99 {summary['p99_ratio']}, p999 "
              f"{summary['p999_ratio']}, updates {summary['updates_per_run']}, "
              f"failed {summary['failed']} (targets: p99 <= 1.2, p999 <= 1.3, 0 failed)")
    out["foreign_cpu_s"] = [r["foreign_cpu_s"] for r in runs]
    return out


def report(result: dict[str, Any], foreign: float) -> None:
    keys = ["rate_rps", "updates", "steady_p50_ms", "steady_p99_ms", "steady_p999_ms",
            "update_p99_ms", "update_p999_ms", "update_max_ms", "failed", "requests"]
    servers = {k: v for k, v in result.items() if isinstance(v, dict) and "rate_rps" in v}
    print(f"{'':16}" + "".join(f"{name:>12}" for name in servers))
    for key in keys:
        cells = "".join(f"{v.get(key, float('nan')):>12.1f}" for v in servers.values())
        print(f"{key:16}{cells}")
    for name, v in servers.items():
        print(f"{name}: update / steady p99 = {v['update_p99_ms'] / v['steady_p99_ms']:.2f} "
              f"(target <= 1.2), p999 = {v['update_p999_ms'] / v['steady_p999_ms']:.2f} "
              "(target <= 1.3)")
    print(f"foreign CPU during the run: {foreign:.1f} s (other processes, short-lived ones "
          "included; on a 2-core box more than a few seconds makes the tails noise)")


if __name__ == "__main__":
    main()
