"""Accuracy gate and auto-selection.

A lower-precision candidate is kept only if (a) its top-1 accuracy on the validation split is at
most ``max_accuracy_drop`` points below the FP32 model's and (b) its top-1 label agrees with
FP32 on at least ``MIN_AGREEMENT`` of all labelled images (train + val). (a) alone would let a
model trade errors (fix two, break two) and still pass; (b) bounds how many answers change.
FP32 candidates are instead checked against the original graph numerically (their rewrites are
exact up to float rounding), so they always remain as the fallback.

:class:`ClassifierGate` is this gate behind the :class:`Gate` interface ``optimize`` runs every
task through (an object detector's is :class:`~.detection_gate.DetectorGate`). It gates image,
sound and text classifiers alike, over the rows :mod:`.labelled` reads for each kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx

from .measure import Candidate, Runner, Timing, ort_runner, per_image_ms
from .quantize import sensitive_nodes

MIN_AGREEMENT = 0.98


@dataclass
class LabelledImages:
    """Preprocessed items (images, log-mels, encoded texts: the graph's FP32 ``input`` rows)
    with their class ids; ``is_val`` marks the validation split."""

    images: np.ndarray  # [N, ...] FP32, e.g. [N, 3, H, W] for images
    labels: np.ndarray  # [N] int
    is_val: np.ndarray  # [N] bool

    @property
    def train_images(self) -> np.ndarray:
        train: np.ndarray = self.images[~self.is_val]
        return train


def predict(run: Runner, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Top-1 class ids for every image."""
    out = [np.asarray(run(np.ascontiguousarray(images[i:i + batch]))).argmax(axis=1)
           for i in range(0, len(images), batch)]
    result: np.ndarray = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    return result


@dataclass
class Accuracy:
    val_accuracy: float | None  # percent, None without a val split
    agreement: float  # percent of all labelled images with the same top-1 as FP32
    val_drop: float | None  # points below FP32 (negative: better than FP32)
    passed: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 2)
        return {"val_accuracy": r(self.val_accuracy), "agreement_with_fp32": r(self.agreement),
                "val_drop_points": r(self.val_drop), "passed": self.passed,
                "reason": self.reason}


def assess(preds: np.ndarray, reference: np.ndarray, data: LabelledImages,
           max_accuracy_drop: float, exact: bool = False) -> Accuracy:
    """Gate one candidate's predictions against FP32's (``reference``). ``exact`` candidates
    (FP32 rewrites, already checked numerically) pass by construction."""
    val = data.is_val
    acc = float((preds[val] == data.labels[val]).mean() * 100) if val.any() else None
    ref = float((reference[val] == data.labels[val]).mean() * 100) if val.any() else None
    agree = float((preds == reference).mean() * 100) if len(preds) else 100.0
    drop = None if acc is None or ref is None else ref - acc
    if exact:
        return Accuracy(acc, agree, drop, True, "FP32 rewrite, checked numerically")
    problems = []
    if drop is None:
        problems.append("no labelled validation images to check accuracy on")
    elif drop > max_accuracy_drop:
        problems.append(f"val accuracy drops {drop:.2f} points (> {max_accuracy_drop:g})")
    if agree < MIN_AGREEMENT * 100:
        problems.append(f"top-1 agreement with FP32 {agree:.2f}% (< {MIN_AGREEMENT:.0%})")
    if problems:
        return Accuracy(acc, agree, drop, False, "; ".join(problems))
    return Accuracy(acc, agree, drop, True,
                    f"drop {drop:.2f} <= {max_accuracy_drop:g} points, agreement "
                    f"{agree:.2f}% >= {MIN_AGREEMENT:.0%}")


class GateResult(Protocol):
    """One candidate's verdict: whether it may be published, why, and its figures."""

    @property
    def passed(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    def to_json(self) -> dict[str, Any]: ...


class Gate(Protocol):
    """What ``optimize`` asks of a version's task: its images, how its graph is run and
    scored, and what its published version records (classifiers here, detectors in
    :mod:`.detection_gate`)."""

    task: str
    outputs: tuple[str, ...]  # the graph outputs the server reads
    torch_paths: bool  # whether the version's torch model can be rebuilt and measured

    @property
    def images(self) -> np.ndarray: ...
    @property
    def calibration_pool(self) -> np.ndarray: ...
    def runner(self, session: Any) -> Runner: ...
    def predict(self, run: Runner) -> Any: ...
    def assess(self, preds: Any, reference: Any, max_drop: float,
               exact: bool = False) -> Any: ...
    def difference(self, a: Any, b: Any) -> float: ...
    def sensitive_nodes(self, model: onnx.ModelProto) -> dict[str, list[str]]: ...
    def settings(self) -> dict[str, Any]: ...
    def describe(self, result: Any) -> str: ...
    def version_metrics(self, metrics: dict[str, Any], result: Any) -> dict[str, Any]: ...


class ClassifierGate:
    """The gate of a classifier: top-1 accuracy and agreement (see the module docstring)."""

    task = "classification"
    outputs: tuple[str, ...] = ("logits", "probabilities")

    def __init__(self, data: LabelledImages, torch_paths: bool = True) -> None:
        self.data = data
        # Only image classifiers can be rebuilt in torch from their weights (torch_paths.py).
        self.torch_paths = torch_paths

    @property
    def images(self) -> np.ndarray:
        return self.data.images

    @property
    def calibration_pool(self) -> np.ndarray:
        return self.data.train_images if len(self.data.train_images) else self.data.images

    def runner(self, session: Any) -> Runner:
        return ort_runner(session)

    def predict(self, run: Runner) -> np.ndarray:
        return predict(run, self.data.images)

    def assess(self, preds: np.ndarray, reference: np.ndarray, max_drop: float,
               exact: bool = False) -> Accuracy:
        return assess(preds, reference, self.data, max_drop, exact=exact)

    def difference(self, a: Any, b: Any) -> float:
        return float(np.abs(np.asarray(a) - np.asarray(b)).max())

    def sensitive_nodes(self, model: onnx.ModelProto) -> dict[str, list[str]]:
        return sensitive_nodes(model)

    def settings(self) -> dict[str, Any]:
        return {"labelled_images": len(self.data.labels),
                "val_images": int(self.data.is_val.sum())}

    def describe(self, result: Accuracy) -> str:
        return f"val {result.val_accuracy}% agreement {result.agreement:.1f}%"

    def version_metrics(self, metrics: dict[str, Any], result: Accuracy) -> dict[str, Any]:
        out = {**metrics, "source_val_accuracy": metrics.get("val_accuracy")}
        if result.val_accuracy is not None:
            out["val_accuracy"] = round(result.val_accuracy / 100.0, 4)
        return out


@dataclass
class Choice:
    chosen: str  # the fastest candidate that passed the gate
    published: str  # the ONNX candidate written as model.onnx (differs for a torch winner)
    reason: str
    ranking: list[dict[str, Any]] = field(default_factory=list)


def choose(candidates: Sequence[Candidate], timings: dict[str, dict[int, Timing]],
           gates: Mapping[str, GateResult]) -> Choice:
    """Fastest per-image p50 (mean over the measured batch sizes) among those that passed."""
    passed = [c for c in candidates if gates[c.name].passed]
    ranked = sorted(passed, key=lambda c: per_image_ms(timings[c.name]))
    ranking = [{"candidate": c.name, "per_image_ms": round(per_image_ms(timings[c.name]), 3)}
               for c in ranked]
    failed = [f"{c.name} ({gates[c.name].reason})" for c in candidates
              if not gates[c.name].passed]
    winner = ranked[0]
    publish = next(c for c in ranked if c.onnx_path is not None)
    reason = (f"{winner.name} has the lowest per-image p50 latency "
              f"({per_image_ms(timings[winner.name]):.2f} ms, mean over batch sizes) of the "
              f"{len(ranked)} candidates that passed the accuracy gate")
    if len(ranked) > 1:
        second = ranked[1]
        gain = per_image_ms(timings[second.name]) / per_image_ms(timings[winner.name])
        spread = max(t.spread for t in timings[winner.name].values())
        reason += f"; {gain:.2f}x faster than {second.name} (round-to-round spread {spread:.0%})"
    if failed:
        reason += "; rejected by the gate: " + ", ".join(failed)
    if publish is not winner:
        reason += (f"; {winner.name} runs on {winner.engine}, which the ONNX server cannot "
                   f"run, so the fastest ONNX candidate {publish.name} is published")
    return Choice(winner.name, publish.name, reason, ranking)
