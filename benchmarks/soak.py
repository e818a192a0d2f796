"""Soak: ``mint serve`` under mixed traffic for a long time, with updates, crashes and garbage.

One MobileNetV2 version (random weights, 2 classes) served with ``instances`` worker processes
(``config.json``). Open loop at ``--load`` x the measured capacity, the requests mixed: HTTP
binary tensors, gRPC, and V2 JSON with a base64 JPEG. During the run: a new version every
``--update-every`` seconds (published as a copy, picked up by ``--poll``), a ``kill -9`` of a
random worker process every ``--kill-every`` seconds, and a malformed request in every
``--malformed-every`` (it must get a 4xx; a 5xx or no answer counts as failed).

Reported: requests and failed requests (target 0 with ``instances: 2``); RSS, open file
descriptors and threads of the server process, and RSS of its whole process tree, at the start
and the end (target: growth < 5 %); p99 latency in the first and the last 5 minutes (target:
drift < 10 %); the foreign CPU seen (a run with more than 10 % of its CPU foreign is noise).

    python benchmarks/soak.py [--duration 1800] [--instances 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from _common import ForeignCpu, own_tree
from _mlserver import MODEL_NAME, free_port, stop
from hot_update import SAMPLE, Server, capacity, export, ours_update, publish_copy
from modelmint._serve.v2client import bytes_request, encode_request
from modelmint._tensor_names import IMAGE_INPUT, PROBABILITIES
from serving_throughput import Sender, grpc_sender, http_sender, start_ours


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


def process_facts(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    threads = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("Threads"))
    tree_rss = 0
    for child in own_tree(pid):
        try:
            text = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        tree_rss += next((int(line.split()[1]) for line in text.splitlines()
                          if line.startswith("VmRSS")), 0)
    return {"rss_mb": rss / 1024, "tree_rss_mb": tree_rss / 1024, "threads": threads,
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


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


def soak(url: str, grpc_address: str, server_pid: int, rate: float, args: argparse.Namespace,
         update: Any) -> dict[str, Any]:
    start = time.perf_counter() + 1.0
    count = int(args.duration * rate)
    records: list[tuple[float, float, bool, str]] = []  # scheduled, latency, ok, kind
    lock = threading.Lock()
    next_index = [0]
    kinds = ["http", "grpc", "image"]

    def sender_loop() -> None:
        senders = {"http": http_sender(url), "grpc": grpc_sender(grpc_address),
                   "image": image_sender(url), "malformed": malformed_sender(url)}
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= count:
                return
            at = start + i / rate
            time.sleep(max(0.0, at - time.perf_counter()))
            kind = "malformed" if i % args.malformed_every == args.malformed_every - 1 \
                else kinds[i % len(kinds)]
            try:
                senders[kind]()
                ok = True
            except Exception:
                ok = False
            records.append((at, time.perf_counter() - at, ok, kind))

    events: list[str] = []

    def chaos_loop() -> None:
        next_update, next_kill = start + args.update_every, start + args.kill_every
        end = start + args.duration - 2
        while (now := time.perf_counter()) < end:
            if now >= next_update:
                update()
                events.append(f"{now - start:.0f}s update")
                next_update += args.update_every
            if now >= next_kill:
                victims = workers_of(server_pid)
                if victims:
                    victim = random.choice(victims)
                    os.kill(victim, signal.SIGKILL)
                    events.append(f"{now - start:.0f}s kill -9 {victim}")
                next_kill += args.kill_every
            time.sleep(0.2)

    threads = [threading.Thread(target=sender_loop) for _ in range(args.senders)]
    chaos = threading.Thread(target=chaos_loop)
    for t in [*threads, chaos]:
        t.start()
    for t in [*threads, chaos]:
        t.join()
    window = min(300.0, args.duration / 3)
    first = [lat for at, lat, ok, kind in records
             if ok and kind != "malformed" and start + 5 <= at < start + window]
    last = [lat for at, lat, ok, kind in records
            if ok and kind != "malformed" and at >= start + args.duration - window]

    def p99(values: list[float]) -> float:
        return float(np.percentile(values, 99) * 1e3) if values else float("nan")

    return {"requests": len(records), "failed": sum(not ok for *_, ok, _ in records),
            "failed_by_kind": {k: sum(1 for *_, ok, kind in records if kind == k and not ok)
                               for k in [*kinds, "malformed"]},
            "updates": sum("update" in e for e in events),
            "kills": sum("kill" in e for e in events),
            "p99_first_ms": p99(first), "p99_last_ms": p99(last), "window_s": window,
            "events": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--load", type=float, default=0.6)
    parser.add_argument("--update-every", type=float, default=20.0)
    parser.add_argument("--kill-every", type=float, default=120.0)
    parser.add_argument("--malformed-every", type=int, default=50)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
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
        update = ours_update(repo, source, url)
        rate = args.load * capacity(Server("ours", url, update, lambda: http_sender(url)))
        print(f"soak: {rate:.1f} req/s for {args.duration:.0f}s, instances {args.instances}",
              file=sys.stderr)
        foreign = ForeignCpu()
        before = process_facts(proc.pid)
        started = time.monotonic()
        result = soak(url, grpc_address, proc.pid, rate, args, update)
        wall = time.monotonic() - started
        after = process_facts(proc.pid)
        result.update(rate_rps=round(rate, 1), instances=args.instances, start=before, end=after,
                      growth={k: round(after[k] / before[k] - 1, 4) for k in before},
                      p99_drift=round(result["p99_last_ms"] / result["p99_first_ms"] - 1, 4),
                      foreign_cpu_s=round(foreign.seconds(), 1), wall_s=round(wall, 1))
        report(result)
        if args.json:
            print(json.dumps({k: v for k, v in result.items() if k != "events"}))
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    print(f"requests {result['requests']}, failed {result['failed']} "
          f"{result['failed_by_kind']} (target 0), {result['updates']} updates, "
          f"{result['kills']} worker kills")
    for key in ("rss_mb", "tree_rss_mb", "fds", "threads"):
        print(f"{key:12} {result['start'][key]:10.1f} -> {result['end'][key]:10.1f} "
              f"({result['growth'][key]:+.1%}; target < 5 %)")
    print(f"p99 first {result['window_s']:.0f}s {result['p99_first_ms']:.1f} ms, last "
          f"{result['p99_last_ms']:.1f} ms (drift {result['p99_drift']:+.1%}; target < 10 %)")
    print(f"foreign CPU {result['foreign_cpu_s']:.1f} s over {result['wall_s']:.0f} s wall "
          "(more than 10 % of the machine's CPU makes the run noise)")


if __name__ == "__main__":
    main()
