"""Serving throughput and latency: ``mint serve`` vs MLServer 1.7.1, same ONNX model.

The model is torchvision's MobileNetV2 (random weights, 2 classes) published with
``modelmint._search.publish.publish_classifier``; MLServer serves the very same
``model.onnx`` through a custom runtime with our session settings (see ``_mlserver.py``).
Each server gets the client its users would use: ours tritonclient.http with binary tensors
(the V2 binary extension);
MLServer tritonclient.grpc, whose raw tensor contents are MLServer's cheapest encoding for a
600 KB tensor (``--mlserver-client rest`` sends V2 JSON instead).

MLServer first gets its best configuration: parallel_workers 0/2 x 1/2 intra-op threads, each
probed at concurrency 16; the fastest is then compared with ours. Closed loop: C client threads
each send one FP32 [1, 3, 224, 224] request, wait for the answer, send the next, for
``--duration`` seconds per (server, concurrency), after a short warm-up. Rounds interleave the
servers (the order alternates) so drift on a shared machine hits both alike; requests/s is the
median over rounds, p50/p99 are over every request of every round. Foreign CPU (processes not
ours) during the run is reported: on a small shared machine it is the main noise source.

Ours runs twice, over HTTP (binary tensors) and gRPC; a bare in-process ONNX Runtime session
with the worker's own settings runs in the same rounds as the physical limit, and each server
row is reported as its share of that row's requests/s and its added p50 (client included).
The path most users take runs too: one real JPEG (a sample photo) as base64 in V2 JSON
(``modelmint-json-jpeg``), against the same decoding, preprocessing and session in-process
(``bare jpeg``).

    python benchmarks/serving_throughput.py [--rounds 3] [--duration 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import ForeignCpu, summary
from _mlserver import MODEL_NAME, free_port, start_mlserver, stop, wait_ready
from modelmint._serve.v2client import bytes_request, encode_request, tensor_request
from modelmint._tensor_names import IMAGE_INPUT, PROBABILITIES, TENSOR_INPUT

CONCURRENCY = (1, 4, 16, 64)
CONFIGS = [(workers, threads) for workers in (0, 2) for threads in (1, 2)]
SHAPE = [1, 3, 224, 224]
Sender = Callable[[], None]
BARE = "bare onnxruntime"  # the in-process row: no server, no client
BARE_JPEG = "bare jpeg"  # the same, from the JPEG's bytes: decode, preprocess, run
JSON_JPEG = "modelmint-json-jpeg"
PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera" / "val" / \
    "bees" / "1032546534_06907fe3b3.jpg"


def publish(root: Path) -> Path:
    """MobileNetV2 with 2 classes in a fresh repository; its version directory."""
    import torchvision

    from modelmint._data.preprocess import ImageSpec
    from modelmint._repository import ModelMetadata, ModelRepository
    from modelmint._search.publish import publish_classifier

    model = torchvision.models.mobilenet_v2(num_classes=2).eval()
    meta = ModelMetadata(name=MODEL_NAME, labels=["ants", "bees"], architecture="mobilenet_v2",
                         preprocessing=ImageSpec())
    return Path(publish_classifier(ModelRepository(root), model, meta, {}).path)


def start_ours(repo: Path, log: Path, *extra: str, grpc_port: int = -1
               ) -> tuple[subprocess.Popen[bytes], str]:
    """``mint serve`` on a free port (gRPC only on ``grpc_port``; ``extra`` CLI flags
    appended), once ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "modelmint.cli", "serve", str(repo), "--http-port", str(port),
           "--grpc-port", str(grpc_port), *(extra or ("--metrics-port", "0"))]
    out = open(log, "ab")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 180)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def http_sender(url: str) -> Sender:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    tensor = httpclient.InferInput(TENSOR_INPUT, SHAPE, "FP32")
    tensor.set_data_from_numpy(batch(), binary_data=True)
    output = httpclient.InferRequestedOutput(PROBABILITIES, binary_data=True)
    return lambda: client.infer(MODEL_NAME, [tensor], outputs=[output]) and None


def grpc_sender(address: str) -> Sender:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput(TENSOR_INPUT, SHAPE, "FP32")
    tensor.set_data_from_numpy(batch())  # raw_input_contents
    return lambda: client.infer(MODEL_NAME, [tensor]) and None


def json_sender(url: str) -> Sender:
    import httpx

    http = httpx.Client(base_url=url, timeout=60)
    # Encoded once: the loop measures the server, not the client building 150k floats of JSON.
    body, headers = encode_request(tensor_request(batch()))

    def send() -> None:
        response = http.post(f"/v2/models/{MODEL_NAME}/infer", content=body, headers=headers)
        response.raise_for_status()

    return send


def json_jpeg_sender(url: str, jpeg: bytes) -> Sender:
    import httpx

    http = httpx.Client(base_url=url, timeout=60)
    body, headers = encode_request(bytes_request(IMAGE_INPUT, [jpeg]))  # base64 in JSON

    def send() -> None:
        response = http.post(f"/v2/models/{MODEL_NAME}/infer", content=body, headers=headers)
        response.raise_for_status()

    return send


def bare_jpeg_sender(onnx: Path, jpeg: bytes) -> Callable[[], Sender]:
    """The JPEG path's limit: what the server does with the photo (decode, resize, crop,
    normalise with the model's own spec), then the session, in-process."""
    from modelmint._data.preprocess import preprocess
    from modelmint._repository import METADATA_FILE, ModelMetadata
    from modelmint._serve.worker import _session

    meta = ModelMetadata.from_json(json.loads((onnx.parent / METADATA_FILE).read_text()))
    session = _session(str(onnx), os.cpu_count() or 1, True, False)
    return lambda: lambda: session.run(
        [PROBABILITIES], {TENSOR_INPUT: preprocess(jpeg, meta.preprocessing)[None]}) and None


def bare_sender(onnx: Path) -> Callable[[], Sender]:
    """The physical limit: one in-process ONNX Runtime session with the server worker's own
    settings, shared by every sender thread (``run`` releases the GIL)."""
    from modelmint._serve.worker import _session

    session = _session(str(onnx), os.cpu_count() or 1, True, False)
    inputs = {TENSOR_INPUT: batch()}
    return lambda: lambda: session.run([PROBABILITIES], inputs) and None


def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def closed_loop(make: Callable[[], Sender], concurrency: int, duration: float,
                warmup: float) -> dict[str, Any]:
    """``concurrency`` threads, each with its own client, send back to back; only requests
    that start after the warm-up and finish before the deadline are counted."""
    senders = [make() for _ in range(concurrency)]
    start = time.monotonic() + warmup
    end = start + duration
    latencies: list[list[float]] = [[] for _ in senders]
    errors: list[BaseException] = []

    def run(send: Sender, out: list[float]) -> None:
        try:
            while True:
                t0 = time.monotonic()
                if t0 >= end:
                    return
                send()
                t1 = time.monotonic()
                if t0 >= start and t1 <= end:
                    out.append(t1 - t0)
        except BaseException as exc:  # reported, not swallowed: a failing server is no result
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, out), daemon=True)
               for s, out in zip(senders, latencies, strict=True)]
    for t in threads:
        t.start()
    foreign = ForeignCpu()  # also counts the warm-up: the cost of ~1 s of extra precision
    for t in threads:
        t.join()
    busy = foreign.seconds() / ((duration + warmup) * (os.cpu_count() or 1))
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    flat = [x for out in latencies for x in out]
    return {"rps": len(flat) / duration, "latencies": flat, "foreign_share": busy}


def probe_mlserver(onnx: Path, work: Path, args: argparse.Namespace,
                   console: Console) -> dict[str, Any]:
    """Every MLServer configuration at concurrency 16; the fastest."""
    best: dict[str, Any] = {}
    for workers, threads in CONFIGS:
        proc, make = launch_mlserver(onnx, work, workers, threads, args.mlserver_client)
        try:
            rps = closed_loop(make, 16, args.duration, args.warmup)["rps"]
        finally:
            stop(proc)
        console.print(f"MLServer parallel_workers={workers} threads={threads}: {rps:.1f} req/s")
        if rps > best.get("rps", -1.0):
            best = {"parallel_workers": workers, "threads": threads, "rps": rps}
    return best


def launch_mlserver(onnx: Path, work: Path, workers: int, threads: int,
                    client: str) -> tuple[subprocess.Popen[bytes], Callable[[], Sender]]:
    http_port, grpc_port = free_port(), free_port()
    proc = start_mlserver(work / "mlserver", http_port, grpc_port, workers, threads, onnx=onnx,
                          log=work / "mlserver.log")
    if client == "grpc":
        return proc, lambda: grpc_sender(f"127.0.0.1:{grpc_port}")
    return proc, lambda: json_sender(f"http://127.0.0.1:{http_port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--mlserver-client", choices=("grpc", "rest"), default="grpc")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=args.json)
    foreign_cpu = ForeignCpu()
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx = publish(work / "repo") / "model.onnx"
        best = probe_mlserver(onnx, work, args, console)
        grpc_port = free_port()
        ours, url = start_ours(work / "repo", work / "ours.log", grpc_port=grpc_port)
        peer, make_peer = launch_mlserver(onnx, work, best["parallel_workers"], best["threads"],
                                          args.mlserver_client)
        jpeg = PHOTO.read_bytes()
        makers = {"modelmint": lambda: http_sender(url),
                  "modelmint-grpc": lambda: grpc_sender(f"127.0.0.1:{grpc_port}"),
                  "mlserver": make_peer, BARE: bare_sender(onnx),
                  JSON_JPEG: lambda: json_jpeg_sender(url, jpeg),
                  BARE_JPEG: bare_jpeg_sender(onnx, jpeg)}
        try:
            for r in range(args.rounds):
                for c in args.concurrency:
                    order = list(makers) if (r + c) % 2 == 0 else list(makers)[::-1]
                    for who in order:
                        result = closed_loop(makers[who], c, args.duration, args.warmup)
                        rows.setdefault((who, c), []).append(result)
                        console.print(f"round {r + 1} c={c} {who}: {result['rps']:.1f} req/s, "
                                      f"foreign CPU {result['foreign_share']:.0%}")
        finally:
            stop(ours)
            stop(peer)
    foreign = foreign_cpu.seconds()
    report(rows, best, foreign, args, console)


def report(rows: dict[tuple[str, int], list[dict[str, Any]]], best: dict[str, Any],
           foreign: float, args: argparse.Namespace, console: Console) -> None:
    title = (f"MobileNetV2 FP32 [1,3,224,224], {os.cpu_count()} CPUs, {args.rounds} rounds x "
             f"{args.duration:.0f}s; MLServer best: parallel_workers={best['parallel_workers']} "
             f"threads={best['threads']} ({args.mlserver_client}); foreign CPU {foreign:.1f}s")
    table = Table(title=title)
    for col in ("server", "concurrency", "req/s (median, spread)", "p50 ms", "p99 ms",
                "requests", "foreign CPU"):
        table.add_column(col, justify="left" if col == "server" else "right")
    out: list[dict[str, Any]] = []
    for (who, c), results in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rps = summary([r["rps"] for r in results])
        lat = np.array([x for r in results for x in r["latencies"]]) * 1000
        p50, p99 = (float(np.percentile(lat, q)) if len(lat) else float("nan") for q in (50, 99))
        share = max(r["foreign_share"] for r in results)  # the worst round
        table.add_row(who, str(c), f"{rps['median']:.1f} ({rps['spread']:.1f})", f"{p50:.1f}",
                      f"{p99:.1f}", str(len(lat)), f"{share:.0%}")
        out.append({"server": who, "concurrency": c, "rps": rps, "p50_ms": p50, "p99_ms": p99,
                    "requests": len(lat), "foreign_cpu_share_max": share})
    console.print(table)
    peak = {who: max(r["rps"]["median"] for r in out if r["server"] == who)
            for who in ("modelmint", "mlserver")}
    ratio = peak["modelmint"] / peak["mlserver"] if peak["mlserver"] else float("inf")
    console.print(f"peak req/s: modelmint {peak['modelmint']:.1f}, MLServer "
                  f"{peak['mlserver']:.1f} ({ratio:.2f}x)")
    # Against the physical limit in the same rounds: throughput share and added p50.
    # The JPEG row against the in-process JPEG path; every other server row against BARE.
    bare = {(r["server"], r["concurrency"]): r for r in out if r["server"] in (BARE, BARE_JPEG)}
    versus_bare = []
    for r in out:
        limit = bare.get((BARE_JPEG if r["server"] == JSON_JPEG else BARE, r["concurrency"]))
        if r["server"] in (BARE, BARE_JPEG) or limit is None:
            continue
        versus_bare.append({"server": r["server"], "concurrency": r["concurrency"],
                            "versus": limit["server"],
                            "rps_share": r["rps"]["median"] / limit["rps"]["median"],
                            "added_p50_ms": r["p50_ms"] - limit["p50_ms"]})
    for v in versus_bare:
        console.print(f"{v['server']} c={v['concurrency']}: {v['rps_share']:.0%} of "
                      f"{v['versus']}'s req/s, p50 +{v['added_p50_ms']:.2f} ms")
    if args.json:
        print(json.dumps({"rows": out, "versus_bare": versus_bare, "mlserver_best": best,
                          "peak_rps": peak,
                          "peak_ratio": ratio, "foreign_cpu_s": round(foreign, 1),
                          "cpus": os.cpu_count(), "duration_s": args.duration,
                          "rounds": args.rounds, "mlserver_client": args.mlserver_client}))


if __name__ == "__main__":
    main()
