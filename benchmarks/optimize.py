"""What ``mint optimize`` buys, against the roofline of this CPU (run by hand).

For MobileNetV2, ResNet-50 (torchvision, random weights, 2 classes), a BERT-base encoder
(HF ``transformers`` BertModel, random weights, sequence length 128) and the MiniLM text
classifier ``mint train`` publishes (``minilm-l6+lr`` trained on SMS spam) at batch 1 and 8: p50
latency and its spread over interleaved rounds for torch eager (all cores, and one thread),
torch.compile (``--compile``; compile time reported), ONNX Runtime with default session
options, OpenVINO (reads the same ONNX), INT8 (static QDQ with the CPU's types for the CNNs,
dynamic for BERT and MiniLM), the partitioned program (torch.export with ONNX Runtime groups)
and the graph ``mint optimize`` publishes; FLOPs counted from the ONNX graph (2 x MACs of
Conv/Gemm/MatMul), achieved GFLOP/s, the theoretical FP32 peak (cores x FLOP/cycle x clock,
from /proc/cpuinfo flags) and a large-matmul peak measured in the same run; foreign CPU load
while measuring.

    python benchmarks/optimize.py [--rounds 3] [--iters 5] [--images 24] [--compile]
        [--models mobilenet_v2,resnet50,bert_base,minilm] [--texts 400] [--minilm-budget 240]
        [--no-partition] [--json]

``mint optimize`` needs labelled images for its gate: the benchmark publishes each random CNN
with a provenance split of the first ``--images`` hymenoptera images per split. Random weights
make the gate's verdict meaningless for accuracy; the rows are about speed. The random BERT has
no labelled data, so its "choice" row is the FP32 graph after our passes (see bert_case); the
trained MiniLM row is the transformer through the real gate (see minilm_case).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
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
from torch import nn

from _common import ForeignCpu
from modelmint._data.preprocess import ImageSpec
from modelmint._optimize import optimize
from modelmint._optimize.measure import Candidate, measure, ort_runner, ort_session
from modelmint._optimize.openvino_path import openvino_runner
from modelmint._optimize.partition_compile import partition_model
from modelmint._optimize.passes_onnx import run_onnx_passes
from modelmint._optimize.pipeline import load_labelled
from modelmint._optimize.quantize import (
    choose_quant_config,
    cpu_features,
    dynamic_quant_config,
    preprocess_for_quant,
    quantize_int8,
)
from modelmint._optimize.select import LabelledImages
from modelmint._optimize.torch_paths import torch_runner
from modelmint._repository import ONNX_FILE, WEIGHTS_FILE, ModelMetadata, ModelRepository
from modelmint._search.publish import publish_classifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"
SMS = DATA.parent / "sms_spam" / "sms_spam.tsv"
BATCHES = (1, 8)
SEQ_LEN = 128
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


class BertEncoder(nn.Module):
    """BERT-base (HF ``transformers`` BertModel, default config: 12 layers, 768 wide, 12
    heads, random weights, no pooler): token ids [N, 128] → hidden states [N, 128, 768]."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(), add_pooling_layer=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bert(input_ids=ids).last_hidden_state
        return out


@dataclass
class Case:
    """One model under test: its torch module, FP32 ONNX graph, and sample inputs."""

    name: str
    net: nn.Module
    onnx_path: Path
    sample: np.ndarray  # at least max(BATCHES) rows
    output: str  # the ONNX output compared and timed
    int8: Candidate
    choice: Candidate
    info: dict[str, Any] = field(default_factory=dict)


def image_case(name: str, args: argparse.Namespace, console: Console, tmp: Path) -> Case:
    torch.manual_seed(0)
    net = MODELS[name]().eval()
    meta = ModelMetadata(name=name.replace("_", "-"), labels=["ants", "bees"],
                         architecture=f"bench-{name}", preprocessing=ImageSpec(),
                         provenance={"data_root": str(DATA),
                                     "split": labelled_split(args.images)})
    repo = ModelRepository(tmp / "models")
    source = publish_classifier(repo, net, meta)
    console.print(f"[bold]{name}[/]: mint optimize ...")
    result = optimize(source.path, rounds=1, iters=2)
    sample = np.random.default_rng(0).normal(size=(8, 3, 224, 224)).astype(np.float32)
    config = choose_quant_config(cpu_features())
    prepared = tmp / f"{name}-prepared.onnx"
    preprocess_for_quant(onnx.load(str(source.path / ONNX_FILE)), prepared)
    data: LabelledImages | None = load_labelled(meta)
    calibration = data.train_images if data is not None else sample
    quantize_int8(prepared, tmp / f"{name}-int8.onnx", calibration, config)
    return Case(name, net, source.path / ONNX_FILE, sample, "logits",
                Candidate(f"ort-{config.name}", "onnxruntime", "int8",
                          ort_runner(ort_session(str(tmp / f"{name}-int8.onnx")))),
                Candidate(f"mint-choice ({result.published})", "onnxruntime", "chosen",
                          ort_runner(ort_session(str(Path(result.path) / ONNX_FILE)))),
                {"chosen": result.chosen, "published": result.published,
                 "reason": result.report["reason"]})


def bert_case(args: argparse.Namespace, console: Console, tmp: Path) -> Case:
    """A random encoder has no labelled data for ``mint optimize``'s gate (the minilm row is a
    trained transformer through it), so for BERT the "choice" row is what it does without a
    gate: our FP32 ONNX passes, run with the server's session settings; INT8 is ORT dynamic
    quantization (the usual for transformers: weights S8 per channel, activations quantized
    per call)."""
    torch.manual_seed(0)
    net = BertEncoder().eval()
    path = tmp / "bert.onnx"
    ids = torch.randint(0, 30522, (2, SEQ_LEN))
    console.print("[bold]bert_base[/]: ONNX export, passes, dynamic INT8 ...")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (ids,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["hidden"],
                          dynamic_axes={"input": {0: "batch"}, "hidden": {0: "batch"}})
    passed, _ = run_onnx_passes(onnx.load(str(path)))
    onnx.save(passed, str(tmp / "bert-passes.onnx"))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = choose_quant_config(cpu_features())
    quantize_dynamic(str(path), str(tmp / "bert-int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=config.reduce_range)
    sample = np.random.default_rng(0).integers(0, 30522, size=(8, SEQ_LEN)).astype(np.int64)
    return Case("bert_base", net, path, sample, "hidden",
                Candidate("ort-int8-dynamic", "onnxruntime", "int8", ort_runner(
                    ort_session(str(tmp / "bert-int8.onnx")), "hidden")),
                Candidate("mint-fp32 (passes, server session)", "onnxruntime", "chosen",
                          ort_runner(ort_session(str(tmp / "bert-passes.onnx")), "hidden")),
                {"chosen": "fp32 passes (no gate data for INT8)", "published": "n/a",
                 "reason": "random weights, no labelled data to gate INT8 on"})


def minilm_case(args: argparse.Namespace, console: Console, tmp: Path) -> Case:
    """The text model the platform trains with a transformer (``minilm-l6+lr``: the
    all-MiniLM-L6-v2 encoder, mean pooling, a logistic-regression head; one FP32 input of token
    ids and attention mask, [N, 2, 128]), trained by the search on ``--texts`` SMS messages
    (evenly spaced through the file, ~13 % spam) and optimized by ``mint optimize`` behind the
    same gate as every version: its own labelled texts. The INT8 row is the dynamic variant
    ``mint optimize`` tries first."""
    from safetensors.torch import load_file

    from modelmint._search.options import TrainOptions
    from modelmint._search.run import train
    from modelmint._tasks.text.minilm import EncoderClassifier, load_minilm

    console.print(f"[bold]minilm[/]: mint train on {args.texts} SMS texts, mint optimize ...")
    header, *lines = SMS.read_text(encoding="utf-8").splitlines()
    picked = [lines[int(i)] for i in np.linspace(0, len(lines) - 1, min(args.texts, len(lines)))]
    (tmp / "sms.tsv").write_text("\n".join([header, *picked]) + "\n", encoding="utf-8")
    trained = train(TrainOptions(data=str(tmp / "sms.tsv"), name="minilm",
                                 repo=str(tmp / "text-models"), runs_dir=str(tmp / "runs"),
                                 budget=args.minilm_budget, candidates=["minilm-l6+lr"],
                                 max_trials=1), Console(quiet=True))
    version = Path(str(trained.version_dir))
    result = optimize(version, rounds=1, iters=2)
    state = load_file(str(version / WEIGHTS_FILE))
    net = EncoderClassifier(load_minilm(), nn.Linear(*state["head.weight"].shape[::-1])).eval()
    net.load_state_dict(state, strict=True)
    data = load_labelled(ModelMetadata.load(version))
    assert data is not None, "the trained version records its texts"
    rows = data.images[data.is_val] if data.is_val.any() else data.images
    sample = np.ascontiguousarray(np.resize(rows, (max(BATCHES), *rows.shape[1:])))
    config = dynamic_quant_config(cpu_features())
    preprocess_for_quant(onnx.load(str(version / ONNX_FILE)), tmp / "minilm-prepared.onnx")
    quantize_int8(tmp / "minilm-prepared.onnx", tmp / "minilm-int8.onnx", data.train_images,
                  config)
    gate = [{"variant": q["config"]["name"], **{k: q[k] for k in ("passed", "val_accuracy",
             "agreement_with_fp32", "reason")}} for q in result.report["quantization"]]
    return Case("minilm", net, version / ONNX_FILE, sample, "logits",
                Candidate(f"ort-{config.name}", "onnxruntime", "int8", ort_runner(
                    ort_session(str(tmp / "minilm-int8.onnx")))),
                Candidate(f"mint-choice ({result.published})", "onnxruntime", "chosen",
                          ort_runner(ort_session(str(Path(result.path) / ONNX_FILE)))),
                {"chosen": result.chosen, "published": result.published,
                 "reason": result.report["reason"], "gate": gate,
                 "val_accuracy": trained.metrics.get("val_accuracy"),
                 "labelled_texts": len(data.labels)})


def peers(case: Case, args: argparse.Namespace, console: Console
          ) -> tuple[list[Candidate], dict[str, Any]]:
    """Every engine for one case. torch.compile's and partitioning's build times are
    measured here (first call per batch shape for compile) and reported, never timed."""
    extra: dict[str, Any] = {}
    cands = [Candidate("torch-eager", "torch", "fp32", torch_runner(case.net)),
             Candidate("torch-eager-1t", "torch", "fp32", torch_runner(case.net, 1))]
    if args.compile:
        compiled: nn.Module = torch.compile(case.net, dynamic=False)  # type: ignore[assignment]
        run = torch_runner(compiled)
        for b in BATCHES:
            start = time.perf_counter()
            run(np.ascontiguousarray(np.resize(case.sample, (b, *case.sample.shape[1:]))))
            extra[f"compile_s_b{b}"] = round(time.perf_counter() - start, 1)
        cands.append(Candidate("torch-compile", "torch", "fp32", run))
    cands.append(Candidate("ort-default", "onnxruntime", "fp32", ort_runner(
        ort.InferenceSession(str(case.onnx_path), providers=["CPUExecutionProvider"]),
        case.output)))
    try:
        cands.append(Candidate("openvino", "openvino", "fp32",
                               openvino_runner(str(case.onnx_path))))
    except ImportError:
        console.print("openvino not installed: row skipped")
    cands.append(case.int8)
    if not args.no_partition:
        start = time.perf_counter()
        try:
            part = partition_model(case.net, torch.from_numpy(case.sample[:2]))
            extra["partition_s"] = round(time.perf_counter() - start, 1)
            extra["partition"] = {"groups": [g.torch_nodes for g in part.groups],
                                  "torch_ops": part.torch_ops}
            cands.append(Candidate("partitioned (torch.export + ORT groups)", "torch",
                                   "fp32", torch_runner(part.module())))
        except Exception as exc:  # report, keep benchmarking the others
            extra["partition_error"] = str(exc).splitlines()[0][:200]
            console.print(f"partitioning failed: {extra['partition_error']}")
    cands.append(case.choice)
    return cands, extra


def bench_model(name: str, args: argparse.Namespace, console: Console, tmp: Path
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if name in MODELS:
        case = image_case(name, args, console, tmp)
    else:
        case = {"bert_base": bert_case, "minilm": minilm_case}[name](args, console, tmp)
    candidates, extra = peers(case, args, console)
    # Conv/Gemm/MatMul FLOPs are linear in the batch; counting once at the largest batch
    # avoids shape inference at batch 1, which leaves BERT's attention shapes unknown.
    per_row = graph_flops(onnx.load(str(case.onnx_path)), max(BATCHES)) / max(BATCHES)
    flops = {b: per_row * b for b in BATCHES}
    console.print(f"[bold]{name}[/]: {args.rounds} interleaved rounds x {len(candidates)} "
                  f"engines x batches {BATCHES}")
    foreign = ForeignCpu()
    started = time.perf_counter()
    timings = measure(candidates, BATCHES, case.sample, rounds=args.rounds, iters=args.iters)
    wall = time.perf_counter() - started
    rows = []
    for cand in candidates:
        for b in BATCHES:
            t = timings[cand.name][b]
            rows.append({"model": name, "batch": b, "engine": cand.name,
                         "p50_ms": round(t.p50_ms, 2), "p99_ms": round(t.p99_ms, 2),
                         "spread": round(t.spread, 3), "gflop": round(flops[b] / 1e9, 3),
                         "gflops": round(flops[b] / (t.p50_ms / 1e3) / 1e9, 1)})
    info = {"model": name, **case.info, **extra, "measure_s": round(wall, 1),
            # Share of the machine's CPU time that other processes used while we measured.
            "foreign_cpu": round(foreign.seconds() / (wall * (os.cpu_count() or 1)), 2)}
    return rows, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--images", type=int, default=24, help="labelled images per split")
    parser.add_argument("--models", default="mobilenet_v2,resnet50,bert_base,minilm")
    parser.add_argument("--texts", type=int, default=400,
                        help="SMS messages the minilm row trains on (and gates over)")
    parser.add_argument("--minilm-budget", type=float, default=240.0,
                        help="mint train --budget of the minilm row, seconds")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile rows (20-40 s compile per model and shape)")
    parser.add_argument("--no-partition", action="store_true",
                        help="skip the partitioned rows (torch.export + ONNX per group)")
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
                "GFLOP/s", "% theor.", "% matmul peak"):
        table.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for r in rows:
        table.add_row(r["model"], str(r["batch"]), r["engine"], f"{r['p50_ms']:.1f}",
                      f"{r['p99_ms']:.1f}", f"{r['spread']:.0%}", f"{r['gflop']:.2f}",
                      f"{r['gflops']:.1f}", f"{r['gflops'] / peak['gflops']:.0%}",
                      f"{r['gflops'] / peak['matmul_gflops']:.0%}")
    console.print(table)
    for c in choices:
        console.print(f"{c['model']}: mint optimize chose {c['chosen']} "
                      f"(published {c['published']}); foreign CPU {c['foreign_cpu']:.0%} "
                      f"during {c['measure_s']} s of measuring; "
                      + ", ".join(f"{k} {v}" for k, v in c.items()
                                  if k.startswith(("compile", "partition"))))
        for g in c.get("gate", []):  # the trained rows: each INT8 variant's verdict
            console.print(f"  {g['variant']}: {'pass' if g['passed'] else 'fail'} ({g['reason']})")
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    console.print(f"load average before {load_before}, after {load_after}")
    if args.json:
        sys.stdout.write(json.dumps({"rows": rows, "peak": peak, "choices": choices,
                                     "loadavg": {"before": load_before,
                                                 "after": load_after}}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
