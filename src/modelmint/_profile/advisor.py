"""The advisor: rules with thresholds over a profile; every advice names its evidence and the
exact setting to change. ``knob`` links an advice to what ``--auto-tune`` can try.

Thresholds (after MindInsight's tuning guide):
- input-bound when the data wait is ≥ 5 % (moderate) / ≥ 20 % (high) of step time;
- the bottleneck stage is the one whose input buffer is fuller than its output buffer by more
  than 0.1, or a source stage whose output is under 0.6 full; inside it, the sub-stage with the
  most time per sample is named;
- GPU advice (pin_memory/non_blocking, mixed precision) only when CUDA is available, all-reduce
  advice only with several processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, NotFound
from .trace import SUMMARY_FILE

MODERATE_WAIT, HIGH_WAIT = 0.05, 0.20
OCCUPANCY_GAP, SOURCE_STARVED = 0.1, 0.6
REPLAY_FILE = "replay.json"


@dataclass
class Advice:
    rule: str
    severity: str  # high | moderate | info
    title: str
    evidence: str  # the numbers the advice rests on
    setting: str  # the exact change
    knob: str | None = None  # what --auto-tune can apply, when it can


@dataclass
class Analysis:
    classification: str  # input-bound | compute-bound
    severity: str  # high | moderate | none
    wait_share: float
    bottleneck_stage: str | None
    samples_per_s: float
    ceiling_samples_per_s: float | None
    ceiling_source: str  # "replay probe" | "estimate from the trace (steps minus wait)"
    advice: list[Advice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def input_bound(self) -> bool:
        return self.classification == "input-bound"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_profile_dir(given: Path) -> Path:
    """A ``profile/`` folder, a run directory holding one, or a model-search run directory,
    where each trial has its own ``trials/NNN/profile/``: the latest one that ran steps is the
    one worth reading (fine-tune trials run after the baselines)."""
    path = Path(given)
    if (path / SUMMARY_FILE).exists():
        return path
    # A run's own profile/ may hold only auto-tune results: it counts when it has a summary.
    if (path / "profile" / SUMMARY_FILE).exists():
        return path / "profile"
    trials = sorted((path / "trials").glob(f"*/profile/{SUMMARY_FILE}"),
                    key=lambda p: p.stat().st_mtime)
    return trials[-1].parent if trials else path


def load_summary(profile_dir: Path) -> dict[str, Any]:
    path = resolve_profile_dir(profile_dir)
    try:
        data: dict[str, Any] = json.loads((path / SUMMARY_FILE).read_text())
    except FileNotFoundError as exc:
        raise NotFound(f"{path}: no {SUMMARY_FILE}; train with --profile (or close a "
                       "StepTracer with a run_dir) first") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path / SUMMARY_FILE}: not valid JSON ({exc})") from exc
    data.setdefault("source", str(path))
    replay = path / REPLAY_FILE
    if replay.exists():
        data["replay"] = json.loads(replay.read_text())
    return data


def analyze(profile_dir: Path) -> Analysis:
    """Read ``profile_dir`` (a run's ``profile/`` folder or the run directory) and advise."""
    return analyze_summary(load_summary(profile_dir))


def analyze_summary(summary: dict[str, Any]) -> Analysis:
    parts = summary["parts"]
    wait = float(parts["wait"]["share"])
    severity = "high" if wait >= HIGH_WAIT else "moderate" if wait >= MODERATE_WAIT else "none"
    classification = "input-bound" if severity != "none" else "compute-bound"
    pipeline = summary.get("pipeline") or {}
    stage = bottleneck_stage(summary) if classification == "input-bound" else None
    ceiling, source = _ceiling(summary)
    analysis = Analysis(classification, severity, wait, stage, summary["samples_per_s"], ceiling,
                        source, summary=summary)
    step_ms = 1000 * summary["median_step_s"]
    if classification == "input-bound":
        analysis.advice.append(Advice(
            "input-bound", severity, f"Input-bound: the step waits for data {wait:.0%} of the time",
            f"data wait median {1000 * parts['wait']['median_s']:.1f} ms of a {step_ms:.1f} ms "
            f"step ({wait:.1%} ≥ {MODERATE_WAIT:.0%} moderate / {HIGH_WAIT:.0%} high)"
            + (f"; bottleneck stage: {stage}" if stage else ""),
            "make the input pipeline cheaper (below), then re-measure"))
        analysis.advice += _pipeline_advice(summary, pipeline, stage)
    analysis.advice += _compute_advice(summary)
    env = summary.get("environment", {})
    if not env.get("cuda") and env.get("processes", 1) <= 1:
        analysis.notes.append("no GPU advice: CUDA is not available and this is one process "
                              "(pin_memory, mixed precision and all-reduce tuning do not apply)")
    return analysis


def bottleneck_stage(summary: dict[str, Any]) -> str | None:
    """MindInsight's rule on our buffers, then the costliest sub-stage inside the culprit."""
    occupancy = summary.get("queue_occupancy") or {}
    stages = (summary.get("pipeline") or {}).get("stages") or {}
    inside = {name: s["seconds"] for name, s in stages.items() if s["seconds"] > 0}
    loading_is_slow = True
    if occupancy:
        gap = occupancy.get("input", 0.0) - occupancy.get("output", 0.0)
        # Output buffer full yet the step still waits: the consumer side (to-device) is slow.
        loading_is_slow = gap > OCCUPANCY_GAP or occupancy.get("output", 0.0) < SOURCE_STARVED
        if not loading_is_slow:
            return "to-device"
    if loading_is_slow and inside:
        return str(max(inside, key=lambda k: inside[k]))
    return "loading" if loading_is_slow else None


def _ceiling(summary: dict[str, Any]) -> tuple[float | None, str]:
    replay = summary.get("replay")
    if replay and replay.get("samples_per_s"):
        return float(replay["samples_per_s"]), "replay probe"
    parts = summary["parts"]
    busy = 1.0 - parts["wait"]["share"]
    if summary.get("samples_per_s") and busy > 0:
        return summary["samples_per_s"] / busy, "estimate from the trace (steps minus wait)"
    return None, "unknown"


def _share(stages: dict[str, Any], name: str) -> float:
    total = sum(s["seconds"] for s in stages.values()) or 1e-12
    return float(stages.get(name, {}).get("seconds", 0.0)) / total


def _pipeline_advice(summary: dict[str, Any], pipeline: dict[str, Any],
                     stage: str | None) -> list[Advice]:
    facts = summary.get("facts", {})
    stages = pipeline.get("stages") or {}
    data_facts = facts.get("dataset_facts") or {}
    transform = facts.get("transform") or {}
    out: list[Advice] = []
    per = {k: v["ms_per_sample"] for k, v in stages.items()}
    timing = ", ".join(f"{k} {v:.1f} ms" for k, v in per.items() if v > 0)
    if transform.get("pil_per_sample") and _share(stages, "transform") >= 0.2:
        out.append(Advice(
            "python-transforms", "high" if stage == "transform" else "moderate",
            "Per-sample PIL transforms where tensor-level ones exist",
            f"transform {per.get('transform', 0):.1f} ms/sample = "
            f"{_share(stages, 'transform'):.0%} of loading ({timing}); chain: "
            f"{' → '.join(transform.get('ops', []))}",
            "crop and flip the cached uint8 arrays per sample; ColorJitter + ToTensor + "
            "Normalize as one 3x3 colour matrix per image over the whole batch in collate_fn "
            "(modelmint._data.batch_colour: CropFlipJitter + BatchColour)",
            knob="tensor_transforms"))
    source = data_facts.get("mean_source_pixels")
    target = data_facts.get("target_pixels")
    if _share(stages, "decode") + _share(stages, "read") >= 0.15 and not \
            data_facts.get("draft_decode"):
        ratio = f"; source images {source / target:.1f}x the {int(target ** 0.5)}² target" \
            if source and target else ""
        out.append(Advice(
            "reduced-size-decode", "high" if stage in ("decode", "read") else "moderate",
            "Decode JPEGs at reduced size (PIL draft mode)",
            f"decode {per.get('decode', 0):.1f} ms/sample = {_share(stages, 'decode'):.0%} of "
            f"loading{ratio}",
            'img.draft("RGB", (resize, resize)) before img.convert("RGB"): libjpeg scales by '
            "1/2, 1/4 or 1/8 while decoding", knob="draft_decode"))
    epochs = len(summary.get("epochs", []))
    size_mb = data_facts.get("cache_mb")
    if not data_facts.get("cache_decoded") and size_mb is not None and size_mb < 2048 and \
            _share(stages, "decode") + _share(stages, "read") >= 0.05:
        out.append(Advice(
            "cache-decoded", "moderate", "Cache the decoded, resized images in memory",
            f"read+decode {per.get('read', 0) + per.get('decode', 0):.1f} ms/sample is repeated "
            f"every epoch ({epochs} seen); the resized uint8 images take ~{size_mb:.0f} MB",
            "keep the decoded image resized to the short side (uint8) per index after its "
            "first decode; random crop/flip/jitter still run per epoch", knob="cache_decoded"))
    workers = facts.get("num_workers")
    cores = facts.get("cores") or summary.get("environment", {}).get("cores", 1)
    if workers == 0:
        note = (f"only {cores} cores: a worker competes with the {cores} compute threads, so "
                "measure it (auto-tune does) and give compute one thread less"
                if cores <= 2 else f"{cores} cores available")
        out.append(Advice(
            "workers", "moderate", "Load batches in worker processes",
            f"num_workers=0: all loading ({timing}) runs in the training process, between "
            f"steps; {note}",
            f"DataLoader(num_workers={max(1, min(cores - 1, 4))}, persistent_workers=True, "
            "prefetch_factor=2)", knob="num_workers"))
    elif isinstance(workers, int) and workers >= cores:
        out.append(Advice(
            "workers", "moderate", "More workers than cores",
            f"num_workers={workers} on {cores} cores: workers and compute time-slice",
            f"DataLoader(num_workers={max(1, cores - 1)})", knob="num_workers"))
    return out


def _compute_advice(summary: dict[str, Any]) -> list[Advice]:
    facts = summary.get("facts", {})
    parts = summary["parts"]
    env = summary.get("environment", {})
    out: list[Advice] = []
    compute = parts["compute"]["share"]
    # The frozen prefix first: on this CPU it gains more than channels_last (~2x vs ~1.3x).
    frozen = facts.get("frozen_prefix") or {}
    if frozen.get("frozen") and frozen.get("engine") == "torch" and compute >= 0.3:
        out.append(Advice(
            "frozen-prefix", "high" if compute >= 0.5 else "moderate",
            "Run the frozen layers in an inference engine",
            f"{frozen.get('module')} holds {frozen.get('parameter_share', 0):.0%} of the "
            f"parameters, none trains and its BatchNorm is frozen, yet forward+backward is "
            f"{compute:.0%} of the step: eager PyTorch re-runs that inference graph unfused "
            "every step",
            "modelmint._profile.frozen.OnnxFrozenPrefix(prefix, example) (ONNX Runtime: "
            "BatchNorm folded, conv+activation fused, NHWC kernels); where augmentation allows, "
            "cache the prefix's activations instead (mint train's own recipe does)",
            knob="frozen_onnxruntime"))
    # A loop that converts on the device side says so with tracer.note(channels_last=...).
    layout = facts.get("channels_last", facts.get("input_channels_last"))
    if facts.get("input_shape") and layout is False:
        out.append(Advice(
            "channels-last", "moderate" if compute >= 0.3 else "info",
            "Use channels_last memory format for the convolutions",
            f"compute {compute:.0%} of the step, inputs {facts.get('input_shape')} in NCHW "
            "(channels_last halves MobileNetV2's eager time on this CPU)",
            "model.to(memory_format=torch.channels_last); "
            "x = x.contiguous(memory_format=torch.channels_last)", knob="channels_last"))
    if env.get("cuda"):
        if parts["h2d"]["share"] >= MODERATE_WAIT and not facts.get("pin_memory"):
            out.append(Advice(
                "pin-memory", "moderate", "Pinned memory and asynchronous copies",
                f"host-to-device copy {parts['h2d']['share']:.0%} of the step",
                "DataLoader(pin_memory=True) and x.to(device, non_blocking=True)"))
        if compute >= 0.5 and not facts.get("amp"):
            out.append(Advice(
                "mixed-precision", "moderate", "Mixed precision",
                f"forward+backward {compute:.0%} of the step on a GPU",
                "with torch.autocast('cuda', dtype=torch.bfloat16): ... (GradScaler for fp16)"))
    if env.get("processes", 1) > 1 and parts["tail"]["share"] >= 0.15:
        out.append(Advice(
            "all-reduce", "moderate", "Gradient all-reduce dominates the tail",
            f"tail (optimizer + all-reduce) {parts['tail']['share']:.0%} of the step with "
            f"{env.get('processes')} processes",
            "DDP(bucket_cap_mb=100, gradient_as_bucket_view=True); accumulate gradients with "
            "model.no_sync() over 2-4 micro-batches"))
    return out
