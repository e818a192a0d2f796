"""``mint optimize``: graph passes → INT8 with an accuracy gate → measured choice → new version.

The published version is the source version with ``model.onnx`` replaced by the chosen graph,
an ``optimization`` section added to ``modelmint.json`` and the full report in
``optimize.json``; the server loads it like any other version. Classifiers and object detectors
share the flow, image, sound and text classifiers alike (their labelled items are read per
preprocessing kind by :mod:`.labelled`); what differs (their inputs, outputs, accuracy gate,
recorded metrics) is their :class:`~.select.Gate`. Which INT8 methods are tried depends on the
graph (:func:`~.quantize.quant_plan`: static for convolutional graphs; dynamic, then static, for
transformers and other conv-free graphs), each behind the same gate.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .._repository import (
    METADATA_FILE,
    ONNX_FILE,
    ModelMetadata,
    ModelRepository,
    VersionRef,
    resolve_version,
)
from .._tensor_names import TENSOR_INPUT
from ..errors import DataError, InvalidInput, RepositoryError
from . import passes_onnx
from .detection_gate import DETECTION_TASK, DetectorGate, load_detection_images
from .labelled import load_labelled
from .measure import Candidate, Timing, measure, ort_session
from .openvino_path import openvino_candidates
from .quantize import (
    STATIC,
    QuantConfig,
    cpu_features,
    preprocess_for_quant,
    quant_plan,
    quantize_int8,
    quantized_nodes,
)
from .select import ClassifierGate, Gate, GateResult, choose
from .torch_paths import torch_candidates

REPORT_FILE = "optimize.json"
FP32_TOLERANCE = 1e-3  # max output difference allowed for an FP32 rewrite (see Gate.difference)
BATCHES = (1, 8)
MAX_CALIBRATION = 128  # items; MinMax ranges are stable well before this on small models
# V2 datatypes of a graph's tensor inputs, as ONNX element types.
ONNX_TYPES = {"FP32": onnx.TensorProto.FLOAT, "FP16": onnx.TensorProto.FLOAT16,
              "INT64": onnx.TensorProto.INT64, "INT32": onnx.TensorProto.INT32}

Say = Callable[[str], None]


@dataclass
class OptimizeResult:
    model: str
    source_version: int
    version: int
    path: str
    chosen: str
    published: str
    report: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "source_version": self.source_version,
                "version": self.version, "path": self.path, "chosen": self.chosen,
                "published": self.published, "report": self.report}


def resolve(path: str | Path) -> tuple[ModelRepository, VersionRef]:
    """``REPO/<model>`` (latest version) or ``REPO/<model>/<n>`` → repository and version;
    REPO a folder or ``s3://BUCKET/PREFIX``."""
    return resolve_version(path)


def load_gate(meta: ModelMetadata, version_dir: Path, limit: int | None = None) -> Gate:
    """The gate of the version's task, over its own labelled items."""
    if meta.task == DETECTION_TASK:
        detection = load_detection_images(meta, version_dir, limit)
        if detection is not None:
            return DetectorGate(detection)
    else:
        labelled = load_labelled(meta, limit, version_dir)
        if labelled is not None:
            return ClassifierGate(labelled, torch_paths=meta.preprocessing.kind == "image")
    raise DataError(f"{version_dir}: its provenance lists no readable labelled items, so "
                    "INT8 could neither be calibrated nor checked")


def tensor_inputs(meta: ModelMetadata) -> dict[str, str]:
    """The graph inputs the version's signature declares (not the raw BYTES ones, which the
    server decodes before the graph): name -> V2 datatype."""
    inputs, _ = meta.signature
    out = {}
    for t in inputs:
        if t.datatype == "BYTES":
            continue
        if t.datatype not in ONNX_TYPES:
            raise RepositoryError(f"model {meta.name!r}: input {t.name!r} is {t.datatype}; "
                                  f"mint optimize feeds {', '.join(ONNX_TYPES)} tensors")
        out[t.name] = t.datatype
    if list(out) != [TENSOR_INPUT]:
        # Every gate feeds its rows as one tensor; the signature check allows nothing else.
        raise RepositoryError(f"model {meta.name!r}: graph inputs {list(out)}; mint optimize "
                              f"feeds the one tensor input {TENSOR_INPUT!r}")
    return out


def _check_contract(model: onnx.ModelProto, where: str, needed: tuple[str, ...],
                    inputs: dict[str, str]) -> None:
    """What the server needs: the signature's tensor inputs, each of its type with a dynamic
    batch and none besides them, and the task's outputs."""
    weights = {t.name for t in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input if i.name not in weights}
    outputs = {o.name for o in model.graph.output}
    for name, datatype in inputs.items():
        graph_in = graph_inputs.get(name)
        if graph_in is None or graph_in.type.tensor_type.elem_type != ONNX_TYPES[datatype]:
            raise RepositoryError(f"{where}: lost the {datatype} {name!r} tensor")
        if graph_in.type.tensor_type.shape.dim[0].dim_value:
            raise RepositoryError(f"{where}: the batch axis of {name!r} is no longer dynamic")
    extra = sorted(set(graph_inputs) - set(inputs))
    if extra:
        raise RepositoryError(f"{where}: takes inputs {extra} the version's signature lacks")
    if not set(needed) <= outputs:
        raise RepositoryError(f"{where}: outputs {sorted(outputs)} lack "
                              f"{'/'.join(sorted(set(needed) - outputs))}")


def optimize(path: str | Path, target: str = "cpu", max_accuracy_drop: float = 1.0,
             rounds: int = 5, iters: int = 5, include_compile: bool = False,
             include_torch: bool = True, max_images: int | None = None,
             say: Say | None = None) -> OptimizeResult:
    """Optimize the version at ``path`` and publish the result as a new version."""
    log: Say = say or (lambda _msg: None)
    if target != "cpu":
        raise InvalidInput(f"--target {target!r}: only 'cpu' is supported here (FP16 and GPU "
                           "engines need a GPU build of onnxruntime)")
    repo, ref = resolve(path)
    notes = ["FP16 skipped: on CPU it is emulated and slower than FP32; it pays on GPUs only"]
    origin = ref.metadata().provenance.get("optimized_from")
    if isinstance(origin, int):
        # Re-quantizing an INT8 graph compounds its error: start again from the FP32 original.
        start = ref.version
        while isinstance(origin, int) and origin < ref.version:
            ref = repo.version(ref.model, origin)
            origin = ref.metadata().provenance.get("optimized_from")
        notes.append(f"version {start} is itself optimized; started from its source "
                     f"version {ref.version}")
    meta = ref.metadata()
    features = cpu_features()
    log(f"optimizing {ref.model} version {ref.version} on {features.cores} cores "
        f"(VNNI: {features.vnni})")
    inputs = tensor_inputs(meta)
    gate = load_gate(meta, ref.path, max_images)
    with tempfile.TemporaryDirectory(prefix="mint-optimize-") as tmp_name:
        tmp = Path(tmp_name)
        original = onnx.load(str(ref.path / ONNX_FILE))
        fp32, passes = passes_onnx.run_onnx_passes(original)
        _check_contract(fp32, "fp32 passes", gate.outputs, inputs)
        onnx.save(fp32, str(tmp / "fp32.onnx"))
        base = Candidate("ort-fp32", "onnxruntime", "fp32",
                         gate.runner(ort_session(str(tmp / "fp32.onnx"))), str(tmp / "fp32.onnx"))
        orig = Candidate("ort-fp32-unoptimized", "onnxruntime", "fp32",
                         gate.runner(ort_session(str(ref.path / ONNX_FILE))))
        sample = gate.images[:8]
        diff = gate.difference(base.run(sample), orig.run(sample))
        if diff > FP32_TOLERANCE:
            raise RepositoryError(f"graph passes changed the outputs by {diff:.2e} "
                                  f"(> {FP32_TOLERANCE:g}); not publishing")
        log(f"graph passes: {passes[0].nodes_before} → {passes[-3].nodes_after} nodes "
            f"(ORT all: {passes[-1].nodes_after}); max output difference {diff:.1e}")
        candidates = [base]
        reference = gate.predict(base.run)
        gates: dict[str, GateResult] = {base.name: gate.assess(reference, reference,
                                                               max_accuracy_drop, exact=True)}
        quant: list[dict[str, Any]] = []
        # Variants that failed the gate are measured too: the report then shows what the
        # accuracy they lost would have bought.
        plan = quant_plan(fp32, features)
        for cand, verdict in _int8_candidates(fp32, tmp, gate, reference, max_accuracy_drop,
                                              plan, inputs, quant, log):
            candidates.append(cand)
            gates[cand.name] = verdict
        if not any(q["passed"] for q in quant):
            why = "; ".join(f"{q['config']['name']}: {q['reason']}" for q in quant)
            notes.append(f"INT8 not published: every quantized variant failed the gate ({why}), "
                         "FP32 kept (see quantization)")
        if include_torch and not gate.torch_paths:
            notes.append(f"torch paths skipped: {meta.task} versions are measured through "
                         "their ONNX graph only")
        if include_torch:
            # OpenVINO is a peer engine like the torch paths: measured, reported, not served.
            torch_paths = (torch_candidates(ref.path, meta, include_compile, notes)
                           if gate.torch_paths else [])
            for cand in [*torch_paths, *openvino_candidates(str(tmp / "fp32.onnx"), notes)]:
                d = gate.difference(cand.run(gate.images[:2]), base.run(gate.images[:2]))
                if d > FP32_TOLERANCE:
                    notes.append(f"{cand.name} dropped: differs from ONNX by {d:.2e}")
                    continue
                candidates.append(cand)
                gates[cand.name] = gate.assess(reference, reference, max_accuracy_drop,
                                               exact=True)
        log(f"measuring {len(candidates)} candidates x {BATCHES} in {rounds} interleaved rounds")
        timings = measure(candidates, BATCHES, gate.images[:8], rounds=rounds, iters=iters)
        choice = choose(candidates, timings, gates)
        published = next(c for c in candidates if c.name == choice.published)
        assert published.onnx_path is not None
        report: dict[str, Any] = {
            "source": {"model": ref.model, "version": ref.version}, "task": meta.task,
            "target": target, "cpu": features.to_json(),
            "settings": {"max_accuracy_drop": max_accuracy_drop, "rounds": rounds,
                         "iters_per_round": iters, "batches": list(BATCHES),
                         **gate.settings(),
                         "ort_session": "graph level all, intra-op threads = cores, "
                                        "no spinning (the server's settings)"},
            "passes": [r.to_json() for r in passes],
            "quantization": quant,
            "candidates": [_row(c, timings[c.name], gates[c.name]) for c in candidates],
            "chosen": choice.chosen, "published": choice.published, "reason": choice.reason,
            "ranking": choice.ranking, "notes": notes,
        }
        metrics = gate.version_metrics(meta.metrics, gates[choice.published])
        ref_new = repo.publish(ref.model, lambda d, v: _write(d, v, ref, meta, Path(
            published.onnx_path or ""), report, metrics))
    report["version"] = ref_new.version
    return OptimizeResult(ref.model, ref.version, ref_new.version, str(ref_new.path),
                          choice.chosen, choice.published, report)


def _int8_candidates(fp32: onnx.ModelProto, tmp: Path, gate: Gate, reference: Any,
                     max_drop: float, plan: list[QuantConfig], inputs: dict[str, str],
                     quant: list[dict[str, Any]], log: Say
                     ) -> list[tuple[Candidate, GateResult]]:
    """Each method of ``plan`` with the CPU's config; on a gate failure keep sensitive layers
    in FP32, from the smallest exclusion set up, until one passes. Returns every variant tried
    with its gate."""
    prepared = tmp / "prepared.onnx"
    prepared_model = preprocess_for_quant(fp32, prepared)
    pool = gate.calibration_pool
    # Evenly spaced, not the first N: split lists are grouped by class, and calibrating on one
    # class (the first 128 here were 97 % ants) fits ranges to that class alone.
    calibration = pool[np.linspace(0, len(pool) - 1, min(len(pool), MAX_CALIBRATION)).astype(int)]
    sensitive = gate.sensitive_nodes(prepared_model)
    tried: list[tuple[Candidate, GateResult]] = []
    for config in plan:
        configs = [config] + [config.excluding(nodes, label) for label, nodes
                              in sensitive.items() if nodes]
        for cfg in configs:
            out = tmp / f"{cfg.name}.onnx"
            model = quantize_int8(prepared, out, calibration, cfg, next(iter(inputs)))
            _check_contract(model, cfg.name, gate.outputs, inputs)
            cand = Candidate(cfg.name, "onnxruntime", "int8",
                             gate.runner(ort_session(str(out))), str(out))
            verdict = gate.assess(gate.predict(cand.run), reference, max_drop)
            quant.append({"config": cfg.to_json(),
                          "calibration_images": len(calibration) if cfg.method == STATIC else 0,
                          "quant_nodes": quantized_nodes(model),
                          "nodes": len(model.graph.node), **verdict.to_json()})
            log(f"{cfg.name}: {gate.describe(verdict)} → "
                f"{'pass' if verdict.passed else 'fail: ' + verdict.reason}")
            tried.append((cand, verdict))
            if verdict.passed:
                break
    return tried


def _row(c: Candidate, timings: dict[int, Timing], gate: GateResult) -> dict[str, Any]:
    return {"candidate": c.name, "engine": c.engine, "precision": c.precision,
            "publishable": c.onnx_path is not None,
            "latency": {f"b{b}": t.to_json() for b, t in timings.items()},
            "accuracy": gate.to_json(), "notes": c.notes}


def _write(directory: Path, version: int, src: VersionRef, meta: ModelMetadata, onnx_path: Path,
           report: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Copy the source version, swap in the chosen graph, record the choice."""
    for item in src.path.iterdir():
        if item.name in (ONNX_FILE, METADATA_FILE, REPORT_FILE):
            continue
        if item.is_dir():
            shutil.copytree(item, directory / item.name)
        else:
            shutil.copy2(item, directory / item.name)
    shutil.copy2(onnx_path, directory / ONNX_FILE)
    data = meta.to_json()
    data["version"] = version
    data["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    data["metrics"] = metrics
    data["provenance"] = {**meta.provenance, "optimized_from": src.version}
    data["optimization"] = {k: report[k] for k in ("source", "target", "chosen", "published",
                                                   "reason", "notes")}
    data["optimization"]["report"] = REPORT_FILE
    data["files"]["optimization"] = REPORT_FILE
    (directory / METADATA_FILE).write_text(json.dumps(data, indent=2))
    (directory / REPORT_FILE).write_text(json.dumps({**report, "version": version}, indent=2))
