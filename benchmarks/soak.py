"""Soak: ``mint serve`` under mixed traffic for a long time, with updates, crashes and garbage.

One MobileNetV2 version (random weights, 2 classes) served with ``instances`` worker processes
(``config.json``). The requests are mixed, in this proportion and interleaved: HTTP binary
tensors, gRPC, and V2 JSON with a base64 JPEG; a malformed request in every
``--malformed-every`` (it must get a 4xx; a 5xx or no answer counts as failed). Throughout: a
new version every ``--update-every`` seconds (published as a copy, picked up by ``--poll``) and
a ``kill -9`` of a random worker process every ``--kill-every`` seconds. Once an update is
done, version folders older than the last ``KEEP_VERSIONS`` are deleted, as a deployment prunes
them: the repository index lists every version on disk (~30 us each), and a repository that
grows by one version per update would make the run measure its own growing repository.

Method:

* **Capacity** is measured with that same mix (closed loop, ``--capacity-clients`` clients,
  each cycling through the mix at its own phase), and the soak sends an open loop at
  ``--load`` x that capacity: a capacity measured with the cheapest request alone would make
  "60 %" more than the mix can take, and queues would grow for the whole run.
* **Warm-up**: ``--warmup`` seconds of the same traffic, with at least one update and one kill,
  before anything is measured: pools, threads and allocator arenas that are created lazily
  then exist, and would otherwise be counted as growth.
* **Readings** (server RSS, open fds, threads; RSS of the whole process tree) are sampled every
  5 s; each reading is the median of the samples in the 30 s after its moment (a worker just
  restarted is smaller for a few seconds). Growth is reported from the start to the end and from
  the "mark" (10 minutes in, or half the run if shorter) to the end: a leak keeps growing after
  the mark, a warm-up does not. Target: growth < 5 %.
* **Latency** from each request's scheduled send time (a stall counts for the requests it
  delayed): p99 per window (5 minutes, or a fifth of the run if shorter); drift is the last
  window's p99 against the first's (target < 10 %).
* **Foreign CPU**: what processes not ours used meanwhile; more than 10 % of the machine makes
  the run noise.

    python benchmarks/soak.py [--duration 1800] [--warmup 60] [--instances 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from _common import ForeignCpu, own_tree
from _mlserver import MODEL_NAME, free_port, stop
from hot_update import SAMPLE, export, ours_update, publish_copy
from modelmint._serve.v2client import bytes_request, encode_request
from modelmint._tensor_names import IMAGE_INPUT, PROBABILITIES
from serving_throughput import Sender, grpc_sender, http_sender, start_ours

KINDS = ("http", "grpc", "image")
SAMPLE_EVERY_S = 5.0
READING_S = 30.0
MARK_S = 600.0
WINDOW_S = 300.0
KEEP_VERSIONS = 2


def image_sender(url: str) -> Sender:
    """V2 JSON with a base64 JPEG and top-1 classification: the path most users take."""
    http = httpx.Client(base_url=url, timeout=60)
    jpeg = sorted(SAMPLE.glob("*/*.jpg"))[0].read_bytes()
    body, headers = encode_request(bytes_request(IMAGE_INPUT, [jpeg], classification=1))

    def send() -> None:
        response = http.post(f"/v2/models/{MODEL_NAME}/infer", content=body, headers=headers)
        response.raise_for_status()
        assert PROBABILITIES in response.text
    return send


MALFORMED = [b"{", b'{"inputs": 3}', b'{"inputs": [{"name": "input", "datatype": "FP32", '
             b'"shape": [1, 3, 224, 224], "data": [1]}]}', b"\xff\xfe", b"[]"]


def malformed_sender(url: str) -> Sender:
    http = httpx.Client(base_url=url, timeout=60)

    def send() -> None:
        response = http.post(f"/v2/models/{MODEL_NAME}/infer", content=random.choice(MALFORMED),
                             headers={"Content-Type": "application/json"})
        if not 400 <= response.status_code < 500:
            raise RuntimeError(f"malformed request answered {response.status_code}")
    return send


def senders(url: str, grpc_address: str) -> dict[str, Sender]:
    """One client of each kind (each thread gets its own: clients are not shared)."""
    return {"http": http_sender(url), "grpc": grpc_sender(grpc_address),
            "image": image_sender(url), "malformed": malformed_sender(url)}


def kind_of(i: int, malformed_every: int) -> str:
    """The mix: request ``i``'s kind."""
    if i % malformed_every == malformed_every - 1:
        return "malformed"
    return KINDS[i % len(KINDS)]


def mixed_capacity(url: str, grpc_address: str, args: argparse.Namespace,
                   seconds: float = 10.0) -> float:
    """Closed-loop requests/s of the soak's own mix: each client walks the mix from its own
    offset, so every kind is in flight at once, as in the soak."""
    clients = args.capacity_clients
    done = [0] * clients
    start = time.monotonic() + 1.0  # the first second (connections, first requests) uncounted
    stop_at = start + seconds

    def run(offset: int) -> None:
        send = senders(url, grpc_address)
        i = offset
        while (now := time.monotonic()) < stop_at:
            send[kind_of(i, args.malformed_every)]()
            i += clients
            if now >= start:
                done[offset] += 1
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def process_facts(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()

    def field(text: list[str], name: str) -> int:
        return next((int(line.split()[1]) for line in text if line.startswith(name)), 0)

    tree_rss = 0
    for child in own_tree(pid):
        try:
            tree_rss += field(Path(f"/proc/{child}/status").read_text().splitlines(), "VmRSS")
        except OSError:
            continue
    return {"rss_mb": field(status, "VmRSS") / 1024, "tree_rss_mb": tree_rss / 1024,
            "threads": field(status, "Threads"), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def workers_of(pid: int) -> list[int]:
    """The server's model workers (started with ``python -c`` and worker.py's bootstrap), not
    other helper processes it may have."""
    found = []
    for child in sorted(own_tree(pid) - {pid}):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-c" in argv and any(b"sched_setscheduler" in a for a in argv):
            found.append(child)
    return found


def pruned(update: Callable[[], None], model_dir: Path) -> Callable[[], None]:
    """``update``, then the version folders older than the last KEEP_VERSIONS deleted."""
    def run() -> None:
        update()
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
        for version in versions[:-KEEP_VERSIONS]:
            shutil.rmtree(model_dir / str(version), ignore_errors=True)
    return run


def soak(url: str, grpc_address: str, server_pid: int, rate: float, args: argparse.Namespace,
         update: Callable[[], None]) -> dict[str, Any]:
    """Warm-up then the measured run, one open loop throughout; times are relative to the end
    of the warm-up (negative: warm-up)."""
    t0 = time.perf_counter() + 1.0 + args.warmup  # the measured run starts here
    first = t0 - args.warmup
    end = t0 + args.duration
    count = int((args.warmup + args.duration) * rate)
    records: list[tuple[float, float, bool, str]] = []  # scheduled, latency, ok, kind
    samples: list[tuple[float, dict[str, float]]] = []
    events: list[tuple[float, str]] = []  # (time, what)
    lock = threading.Lock()
    next_index = [0]
    done = threading.Event()

    def sender_loop() -> None:
        send = senders(url, grpc_address)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= count:
                return
            at = first + i / rate
            time.sleep(max(0.0, at - time.perf_counter()))
            kind = kind_of(i, args.malformed_every)
            try:
                send[kind]()
                ok = True
            except Exception:
                ok = False
            records.append((at - t0, time.perf_counter() - at, ok, kind))

    def chaos_loop() -> None:
        # The warm-up sees at least one of each, whatever the intervals.
        next_update = first + min(args.update_every, args.warmup / 3)
        next_kill = first + min(args.kill_every, 2 * args.warmup / 3)
        while (now := time.perf_counter()) < end - 2:
            if now >= next_update:
                update()
                events.append((now - t0, "update"))
                next_update += args.update_every
            if now >= next_kill:
                victims = workers_of(server_pid)
                if victims:
                    victim = random.choice(victims)
                    os.kill(victim, signal.SIGKILL)
                    events.append((now - t0, f"kill -9 {victim}"))
                next_kill += args.kill_every
            time.sleep(0.2)

    def sample_loop() -> None:
        while not done.wait(SAMPLE_EVERY_S):
            facts = process_facts(server_pid)
            samples.append((time.perf_counter() - t0, facts))

    threads = [threading.Thread(target=sender_loop) for _ in range(args.senders)]
    chaos = threading.Thread(target=chaos_loop)
    sampler = threading.Thread(target=sample_loop)
    for t in [*threads, chaos, sampler]:
        t.start()
    for t in [*threads, chaos]:
        t.join()
    done.set()
    sampler.join()
    return {"records": records, "samples": samples, "events": events}


def reading(samples: list[tuple[float, dict[str, float]]], at: float) -> dict[str, float]:
    """Median of each fact over the samples in [at, at + READING_S] (else the nearest one)."""
    chosen = [facts for t, facts in samples if at <= t <= at + READING_S]
    if not chosen:
        chosen = [min(samples, key=lambda s: abs(s[0] - at))[1]]
    return {key: float(statistics.median(f[key] for f in chosen)) for key in chosen[0]}


def summarize(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    records, samples, events = run["records"], run["samples"], run["events"]
    measured = [r for r in records if r[0] >= 0]
    mark = min(MARK_S, args.duration / 2)
    start = reading(samples, 0.0)
    at_mark = reading(samples, mark)
    end = reading(samples, args.duration - READING_S)
    window = min(WINDOW_S, args.duration / 5)
    p99s = []
    for k in range(max(1, int(args.duration // window))):
        latencies = [lat for at, lat, ok, kind in measured
                     if ok and kind != "malformed" and k * window <= at < (k + 1) * window]
        p99s.append(round(float(np.percentile(latencies, 99) * 1e3), 1) if latencies
                    else float("nan"))

    def growth(before: dict[str, float]) -> dict[str, float]:
        return {k: round(end[k] / before[k] - 1, 4) for k in before}

    def happened(what: str, warmup: bool) -> int:
        return sum(1 for t, e in events if e.startswith(what) and (t < 0) == warmup)

    return {"requests": len(measured), "failed": sum(not r[2] for r in measured),
            "failed_by_kind": {k: sum(1 for r in measured if r[3] == k and not r[2])
                               for k in [*KINDS, "malformed"]},
            "warmup_requests": len(records) - len(measured),
            "warmup_failed": sum(not r[2] for r in records if r[0] < 0),
            "warmup_updates": happened("update", True), "warmup_kills": happened("kill", True),
            "updates": happened("update", False), "kills": happened("kill", False),
            "start": start, "mark": at_mark, "end": end, "mark_s": mark,
            "growth": growth(start), "growth_from_mark": growth(at_mark),
            "window_s": window, "p99_ms_by_window": p99s,
            "p99_drift": round(p99s[-1] / p99s[0] - 1, 4) if len(p99s) > 1 else 0.0,
            "events": [f"{t:.0f}s {e}" for t, e in events]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0,
                        help="measured seconds, after the warm-up")
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--load", type=float, default=0.6)
    parser.add_argument("--update-every", type=float, default=20.0)
    parser.add_argument("--kill-every", type=float, default=120.0)
    parser.add_argument("--malformed-every", type=int, default=50)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--capacity-clients", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.warmup < 3 or args.duration < 2 * READING_S:
        parser.error(f"--warmup must be >= 3 s and --duration >= {2 * READING_S:.0f} s")
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    proc = None
    try:
        source = export(work / "source")
        repo = work / "repo"
        publish_copy(repo, source)
        (repo / MODEL_NAME / "config.json").write_text(json.dumps({"instances": args.instances}))
        grpc_port = free_port()
        proc, url = start_ours(repo, work / "ours.log", "--metrics-port", "-1", "--poll", "1",
                               "--grpc-port", str(grpc_port))
        grpc_address = f"127.0.0.1:{grpc_port}"
        update = pruned(ours_update(repo, source, url), repo / MODEL_NAME)
        foreign = ForeignCpu()
        started = time.monotonic()
        capacity = mixed_capacity(url, grpc_address, args)
        rate = args.load * capacity
        print(f"soak: capacity of the mix {capacity:.1f} req/s; {rate:.1f} req/s for "
              f"{args.warmup:.0f} s warm-up + {args.duration:.0f} s, instances "
              f"{args.instances}", file=sys.stderr)
        result = summarize(soak(url, grpc_address, proc.pid, rate, args, update), args)
        wall = time.monotonic() - started
        foreign_s = foreign.seconds()
        result.update(capacity_rps=round(capacity, 1), rate_rps=round(rate, 1),
                      instances=args.instances, duration_s=args.duration,
                      warmup_s=args.warmup, foreign_cpu_s=round(foreign_s, 1),
                      foreign_cpu_share=round(foreign_s / (wall * (os.cpu_count() or 1)), 3),
                      wall_s=round(wall, 1))
        report(result)
        if args.json:
            print(json.dumps({k: v for k, v in result.items() if k != "events"}))
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    print(f"capacity of the mix {result['capacity_rps']} req/s, sent {result['rate_rps']} req/s")
    print(f"warm-up: {result['warmup_requests']} requests ({result['warmup_failed']} failed), "
          f"{result['warmup_updates']} updates, {result['warmup_kills']} kills (not measured)")
    print(f"requests {result['requests']}, failed {result['failed']} "
          f"{result['failed_by_kind']} (target 0), {result['updates']} updates, "
          f"{result['kills']} worker kills")
    print(f"{'':12} {'start':>8} {'mark':>8} {'end':>8}  growth: start->end, "
          f"{result['mark_s']:.0f}s->end (target < 5 %)")
    for key in ("rss_mb", "tree_rss_mb", "fds", "threads"):
        print(f"{key:12} {result['start'][key]:8.1f} {result['mark'][key]:8.1f} "
              f"{result['end'][key]:8.1f}  {result['growth'][key]:+7.1%} "
              f"{result['growth_from_mark'][key]:+7.1%}")
    windows = ", ".join(f"{p:.0f}" for p in result["p99_ms_by_window"])
    print(f"p99 per {result['window_s']:.0f} s window (ms): {windows} "
          f"(drift last/first {result['p99_drift']:+.1%}; target < 10 %)")
    print(f"foreign CPU {result['foreign_cpu_s']:.1f} s over {result['wall_s']:.0f} s wall "
          f"({result['foreign_cpu_share']:.0%} of the machine; more than 10 % makes the run "
          "noise)")


if __name__ == "__main__":
    main()
