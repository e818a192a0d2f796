"""``mint optimize``: graph passes → INT8 with an accuracy gate → measured choice → new version.

The published version is the source version with ``model.onnx`` replaced by the chosen graph,
an ``optimization`` section added to ``modelmint.json`` and the full report in
``optimize.json``; the server loads it like any other version. Classifiers and object detectors
share the flow; what differs (their images, outputs, accuracy gate, recorded metrics) is their
:class:`~.select.Gate`.
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

from .._data.preprocess import preprocess
from .._repository import (
    METADATA_FILE,
    ONNX_FILE,
    ModelMetadata,
    ModelRepository,
    VersionRef,
    resolve_version,
)
from ..errors import DataError, InvalidInput, RepositoryError
from . import passes_onnx
from .detection_gate import DETECTION_TASK, DetectorGate, load_detection_images
from .measure import Candidate, Timing, measure, ort_session
from .openvino_path import openvino_candidates
from .quantize import (
    QuantConfig,
    choose_quant_config,
    cpu_features,
    preprocess_for_quant,
    quantize_int8,
)
from .select import ClassifierGate, Gate, GateResult, LabelledImages, choose
from .torch_paths import torch_candidates

REPORT_FILE = "optimize.json"
FP32_TOLERANCE = 1e-3  # max output difference allowed for an FP32 rewrite (see Gate.difference)
BATCHES = (1, 8)
MAX_CALIBRATION = 128  # images; MinMax ranges are stable well before this on small models

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


def load_labelled(meta: ModelMetadata, limit: int | None = None) -> LabelledImages | None:
    """The version's own split (provenance), preprocessed with its own spec."""
    root, split = meta.provenance.get("data_root"), meta.provenance.get("split") or {}
    if not root or not split:
        return None
    images, labels, is_val = [], [], []
    for part in ("train", "val"):
        items = split.get(part, [])[:limit]
        for rel, label in items:
            file = Path(root) / rel
            if not file.is_file() or label not in meta.labels:
                continue
            images.append(preprocess(file, meta.image_spec()))
            labels.append(meta.labels.index(label))
            is_val.append(part == "val")
    if not images:
        return None
    return LabelledImages(np.stack(images), np.asarray(labels), np.asarray(is_val))


def load_gate(meta: ModelMetadata, version_dir: Path, limit: int | None = None) -> Gate:
    """The gate of the version's task, over its own labelled images."""
    if meta.task == DETECTION_TASK:
        detection = load_detection_images(meta, version_dir, limit)
        if detection is not None:
            return DetectorGate(detection)
    else:
        labelled = load_labelled(meta, limit)
        if labelled is not None:
            return ClassifierGate(labelled)
    raise DataError(f"{version_dir}: its provenance lists no readable labelled images, so "
                    "INT8 could neither be calibrated nor checked")


def _check_contract(model: onnx.ModelProto, where: str, needed: tuple[str, ...]) -> None:
    """What the server needs: FP32 ``input`` with a dynamic batch, the task's outputs."""
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    graph_in = inputs.get("input")
    if graph_in is None or graph_in.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise RepositoryError(f"{where}: lost the FP32 'input' tensor")
    if graph_in.type.tensor_type.shape.dim[0].dim_value:
        raise RepositoryError(f"{where}: the batch axis is no longer dynamic")
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
    gate = load_gate(meta, ref.path, max_images)
    with tempfile.TemporaryDirectory(prefix="mint-optimize-") as tmp_name:
        tmp = Path(tmp_name)
        original = onnx.load(str(ref.path / ONNX_FILE))
        fp32, passes = passes_onnx.run_onnx_passes(original)
        _check_contract(fp32, "fp32 passes", gate.outputs)
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
        for cand, verdict in _int8_candidates(fp32, tmp, gate, reference, max_accuracy_drop,
                                              choose_quant_config(features), quant, log):
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
                     max_drop: float, config: QuantConfig, quant: list[dict[str, Any]],
                     log: Say) -> list[tuple[Candidate, GateResult]]:
    """Quantize with the CPU's config; on a gate failure keep sensitive layers in FP32, from the
    smallest exclusion set up, until one passes. Returns every variant tried with its gate."""
    prepared = tmp / "prepared.onnx"
    prepared_model = preprocess_for_quant(fp32, prepared)
    pool = gate.calibration_pool
    # Evenly spaced, not the first N: split lists are grouped by class, and calibrating on one
    # class (the first 128 here were 97 % ants) fits ranges to that class alone.
    calibration = pool[np.linspace(0, len(pool) - 1, min(len(pool), MAX_CALIBRATION)).astype(int)]
    configs = [config] + [config.excluding(nodes, label) for label, nodes
                          in gate.sensitive_nodes(prepared_model).items() if nodes]
    tried: list[tuple[Candidate, GateResult]] = []
    for cfg in configs:
        out = tmp / f"{cfg.name}.onnx"
        model = quantize_int8(prepared, out, calibration, cfg)
        _check_contract(model, cfg.name, gate.outputs)
        cand = Candidate(cfg.name, "onnxruntime", "int8", gate.runner(ort_session(str(out))),
                         str(out))
        verdict = gate.assess(gate.predict(cand.run), reference, max_drop)
        quant.append({"config": cfg.to_json(), "calibration_images": len(calibration),
                      "quant_nodes": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
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
