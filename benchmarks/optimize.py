"""What ``mint optimize`` buys, against the roofline of this CPU (run by hand).

For MobileNetV2 and ResNet-50 (random weights, 2 classes) at batch 1 and 8: p50 latency and its
spread over interleaved rounds for torch eager, ONNX Runtime with default session options, INT8
(QDQ, the CPU's quantization types) and the graph ``mint optimize`` publishes; FLOPs counted from
the ONNX graph (2 x MACs of Conv/Gemm/MatMul), achieved GFLOP/s, the theoretical FP32 peak
(cores x FLOP/cycle x clock, from /proc/cpuinfo flags) and a large-matmul peak measured in the
same run.

    python benchmarks/optimize.py [--rounds 3] [--images 24] [--models mobilenet_v2,resnet50]
                                  [--json]

``mint optimize`` needs labelled images for its gate: the benchmark publishes each random model
with a provenance split of the first ``--images`` hymenoptera images per split. Random weights
make the gate's verdict meaningless for accuracy; the rows are about speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from onnx import numpy_helper, shape_inference
from rich.console import Console
from rich.table import Table

from modelmint.data.preprocess import ImageSpec
from modelmint.optimize import optimize
from modelmint.optimize.measure import Candidate, measure, ort_runner, ort_session
from modelmint.optimize.pipeline import load_labelled
from modelmint.optimize.quantize import (
    choose_quant_config,
    cpu_features,
    preprocess_for_quant,
    quantize_int8,
)
from modelmint.optimize.select import LabelledImages
from modelmint.optimize.torch_paths import torch_runner
from modelmint.repository import ONNX_FILE, ModelMetadata, ModelRepository
from modelmint.train.package import publish_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"
BATCHES = (1, 8)
MODELS = {"mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=2),
          "resnet50": lambda: torchvision.models.resnet50(num_classes=2)}


def graph_flops(model: onnx.ModelProto, batch: int) -> float:
    """2 x multiply-accumulates of every Conv, Gemm and MatMul at ``batch`` (shapes inferred
    with the batch axis fixed); elementwise ops are ignored, as rooflines usually do."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(numpy_helper.to_array(t).shape)
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, out = shapes[node.input[1]], shapes[node.output[0]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))  # N*Cout*H*W x Cin/g*kh*kw
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            transposed = any(x.name == "transA" and x.i for x in node.attribute)
            k = a[-2] if transposed else a[-1]
            macs += int(np.prod(out)) * k
    return 2.0 * macs


def theoretical_peak() -> dict[str, Any]:
    """FP32 FLOP/cycle per core from the widest FMA the flags show (two FMA pipes, as on Zen
    and Skylake-SP: AVX-512 2x16x2 = 64, AVX2+FMA 2x8x2 = 32, AVX 8+8 = 16)."""
    cpu = cpu_features()
    per_cycle = 64 if "avx512f" in cpu.flags else 32 if "fma" in cpu.flags else 16
    ghz = (cpu.mhz or 0.0) / 1000.0
    return {"cores": cpu.cores, "flop_per_cycle": per_cycle, "ghz": round(ghz, 3),
            "gflops": round(cpu.cores * per_cycle * ghz, 1)}


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n FP32 matmul (torch/oneDNN, all cores): what is reachable."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def labelled_split(per_split: int) -> dict[str, list[list[str]]]:
    split: dict[str, list[list[str]]] = {"train": [], "val": []}
    for part in split:
        for label in ("ants", "bees"):
            for f in sorted((DATA / part / label).glob("*.jpg"))[:per_split // 2]:
                split[part].append([str(f.relative_to(DATA)), label])
    return split


def bench_model(name: str, args: argparse.Namespace, console: Console, tmp: Path
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    torch.manual_seed(0)
    net = MODELS[name]().eval()
    meta = ModelMetadata(name=name.replace("_", "-"), labels=["ants", "bees"],
                         architecture=f"bench-{name}", preprocessing=ImageSpec(),
                         provenance={"data_root": str(DATA),
                                     "split": labelled_split(args.images)})
    repo = ModelRepository(tmp / "models")
    source = publish_model(repo, net, meta)
    console.print(f"[bold]{name}[/]: mint optimize ...")
    result = optimize(source.path, rounds=1, iters=2)
    onnx_model = onnx.load(str(source.path / ONNX_FILE))
    sample = np.random.default_rng(0).normal(size=(8, 3, 224, 224)).astype(np.float32)

    config = choose_quant_config(cpu_features())
    prepared = tmp / f"{name}-prepared.onnx"
    preprocess_for_quant(onnx_model, prepared)
    data: LabelledImages | None = load_labelled(meta)
    calibration = data.train_images if data is not None else sample
    quantize_int8(prepared, tmp / f"{name}-int8.onnx", calibration, config)

    candidates = [
        Candidate("torch-eager", "torch", "fp32", torch_runner(net)),
        Candidate("ort-default", "onnxruntime", "fp32", ort_runner(ort.InferenceSession(
            str(source.path / ONNX_FILE), providers=["CPUExecutionProvider"]))),
        Candidate(f"ort-{config.name}", "onnxruntime", "int8",
                  ort_runner(ort_session(str(tmp / f"{name}-int8.onnx")))),
        Candidate(f"mint-choice ({result.published})", "onnxruntime", "chosen",
                  ort_runner(ort_session(str(Path(result.path) / ONNX_FILE)))),
    ]
    console.print(f"[bold]{name}[/]: {args.rounds} interleaved rounds x {len(candidates)} "
                  f"engines x batches {BATCHES}")
    timings = measure(candidates, BATCHES, sample, rounds=args.rounds, iters=args.iters)
    rows = []
    for cand in candidates:
        for b in BATCHES:
            t = timings[cand.name][b]
            flops = graph_flops(onnx_model, b)
            rows.append({"model": name, "batch": b, "engine": cand.name,
                         "p50_ms": round(t.p50_ms, 2), "p99_ms": round(t.p99_ms, 2),
                         "spread": round(t.spread, 3), "gflop": round(flops / 1e9, 3),
                         "gflops": round(flops / (t.p50_ms / 1e3) / 1e9, 1)})
    return rows, {"model": name, "chosen": result.chosen, "published": result.published,
                  "reason": result.report["reason"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--images", type=int, default=24, help="labelled images per split")
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    console = Console(stderr=args.json, width=150)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    peak = theoretical_peak()
    peak["matmul_gflops"] = round(matmul_peak(), 1)
    rows: list[dict[str, Any]] = []
    choices = []
    with tempfile.TemporaryDirectory(prefix="mint-bench-opt-") as tmp:
        for name in args.models.split(","):
            model_rows, choice = bench_model(name, args, console, Path(tmp))
            rows += model_rows
            choices.append(choice)
    peak["matmul_gflops_after"] = round(matmul_peak(), 1)  # the load may change mid-run
    table = Table(title=f"p50 latency; peak {peak['gflops']} GFLOP/s theoretical, "
                        f"{peak['matmul_gflops']}/{peak['matmul_gflops_after']} matmul "
                        f"(before/after)")
    for col in ("model", "batch", "engine", "p50 ms", "p99 ms", "spread", "GFLOP",
                "GFLOP/s", "% matmul peak"):
        table.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for r in rows:
        table.add_row(r["model"], str(r["batch"]), r["engine"], f"{r['p50_ms']:.1f}",
                      f"{r['p99_ms']:.1f}", f"{r['spread']:.0%}", f"{r['gflop']:.2f}",
                      f"{r['gflops']:.1f}", f"{r['gflops'] / peak['matmul_gflops']:.0%}")
    console.print(table)
    for c in choices:
        console.print(f"{c['model']}: mint optimize chose {c['chosen']} "
                      f"(published {c['published']})")
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    console.print(f"load average before {load_before}, after {load_after}")
    if args.json:
        sys.stdout.write(json.dumps({"rows": rows, "peak": peak, "choices": choices,
                                     "loadavg": {"before": load_before,
                                                 "after": load_after}}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
