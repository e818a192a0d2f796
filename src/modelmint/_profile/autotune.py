"""``--auto-tune``: apply the advisor's changes one at a time, re-measure, keep what helps.

Method: the current config and the candidate (current + one knob) are both built once and run
in interleaved rounds (A B A B ...), so a change in machine load hits both alike. Each round
gives a paired ratio ips(B) / ips(A). A change is kept only when the median gain is ≥ 5 % *and*
larger than the measured noise (the largest distance of a round's ratio from the median). Then
the new config is profiled again and the advice is tried the same way (a change dropped
before is tried again only when the config has changed since). A gain ≥ 5 % still
inside the noise, or rounds spread by more than 5 %, get extra rounds (up to ``max_rounds``)
before a change is dropped.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

from .advisor import REPLAY_FILE, Analysis, analyze_summary
from .trace import StepTracer
from .workload import KNOBS, Workload, WorkloadConfig

MIN_GAIN = 0.05
AUTOTUNE_FILE = "autotune.json"


@dataclass
class TuneSettings:
    rounds: int = 3  # interleaved A/B rounds per decision
    max_rounds: int = 5  # more rounds while a gain ≥ 5 % is still within the noise
    steps: int = 4  # measured steps per round
    max_passes: int = 3  # profile → try advice → profile again (stops when nothing is left)


@dataclass
class Trial:
    knob: str
    candidate: dict[str, Any]
    ratios: list[float]
    gain: float
    noise: float
    kept: bool
    reason: str


@dataclass
class TuneResult:
    initial: dict[str, Any]
    final: dict[str, Any]
    diagnosis: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(ratios: list[float], min_gain: float = MIN_GAIN) -> tuple[bool, float, float, str]:
    """Keep a change when the median paired gain is ≥ min_gain and beyond the rounds' spread."""
    median = statistics.median(ratios)
    gain = median - 1.0
    noise = max(abs(r - median) for r in ratios)
    if gain < min_gain:
        return False, gain, noise, f"gain {gain:+.1%} < {min_gain:.0%}"
    if gain <= noise:
        return False, gain, noise, f"gain {gain:+.1%} within the noise ±{noise:.1%}"
    return True, gain, noise, f"gain {gain:+.1%} (noise ±{noise:.1%})"


class Runner:
    """A live workload with its own tracer; ``round()`` measures ``steps`` steps."""

    def __init__(self, data_root: Path, config: WorkloadConfig, steps: int, *,
                 backbone_weights: Path) -> None:
        self.config, self.steps = config, steps
        self.workload = Workload(data_root, config, backbone_weights=backbone_weights)
        self.tracer = StepTracer()
        warm = self.workload.epoch_steps() if config.cache_decoded else 1
        self.workload.run(self.tracer, max(1, warm))  # caches filled, workers started
        self.tracer.steps.clear()
        self.tracer.queue_samples.clear()

    def round(self) -> float:
        before = len(self.tracer.steps)
        self.workload.run(self.tracer, self.steps)
        rows = self.tracer.steps[before:]
        return sum(r["samples"] for r in rows) / sum(r["total"] for r in rows)

    def close(self) -> None:
        self.workload.close()


def interleaved(runners: list[Runner], rounds: int,
                extra: list[Callable[[], float]] | None = None) -> list[list[float]]:
    """ips per round for each runner (and each extra probe), alternating every round."""
    probes: list[Callable[[], float]] = [r.round for r in runners] + list(extra or [])
    out: list[list[float]] = [[] for _ in probes]
    for i in range(rounds):
        order = range(len(probes)) if i % 2 == 0 else reversed(range(len(probes)))
        for j in order:
            out[j].append(probes[j]())
    return out


def replay_probe(runner: Runner, batches: int = 2) -> Callable[[], float]:
    """The compute-only ceiling: the same training step on batches already in memory."""
    cached = runner.workload.sample_batches(batches)

    def probe() -> float:
        samples = 0
        started = perf_counter()
        for i in range(runner.steps):
            x, y = cached[i % len(cached)]
            runner.workload.train_step(x, y, None)
            samples += len(y)
        return samples / (perf_counter() - started)
    return probe


COMPUTE_KNOBS = ("channels_last", "frozen_onnxruntime")


def _target_share(knob: str | None, analysis: Analysis) -> float:
    """The share of the step a knob works on (compute or data wait): the largest first, so a
    compute-bound step tries its compute changes before input-pipeline ones (a pipeline gain
    under 5 % of the whole step is dropped now and tried again once compute is cheaper)."""
    parts = analysis.summary.get("parts", {})
    part = "compute" if knob in COMPUTE_KNOBS else "wait"
    return float(parts.get(part, {}).get("share", 0.0))


def profile_config(runner: Runner) -> Analysis:
    runner.round()
    return analyze_summary(runner.tracer.summary())


def autotune(data_root: Path, initial: WorkloadConfig, settings: TuneSettings | None = None,
             log: Callable[[str], None] = print,
             allowed: tuple[str, ...] = KNOBS, deadline: float | None = None, *,
             backbone_weights: Path) -> TuneResult:
    """``deadline`` (``time.monotonic()``): no change is started that the last one's duration
    says would end after it; what was kept so far stands. ``backbone_weights``: the workload's
    ImageNet MobileNetV2 state dict (:class:`.workload.Workload`)."""
    settings = settings or TuneSettings()
    began = time.monotonic()
    current = Runner(data_root, initial, settings.steps, backbone_weights=backbone_weights)
    first = profile_config(current)
    # A trial builds one more workload and runs 2 x rounds rounds: about twice the baseline.
    last_trial_s = 2 * (time.monotonic() - began)
    result = TuneResult(asdict(initial), {}, {
        "classification": first.classification, "severity": first.severity,
        "wait_share": first.wait_share, "bottleneck_stage": first.bottleneck_stage,
        "advice": [a.rule for a in first.advice]})
    log(f"baseline: {first.classification} ({first.wait_share:.0%} data wait), bottleneck "
        f"stage {first.bottleneck_stage}, {first.samples_per_s:.1f} samples/s")
    # A dropped change is tried again only if the config changed since (another was kept).
    tried: dict[str, WorkloadConfig] = {}
    analysis = first
    for _ in range(settings.max_passes):
        knobs = [a.knob for a in analysis.advice
                 if a.knob in allowed and tried.get(a.knob) != current.config]
        knobs.sort(key=lambda k: -_target_share(k, analysis))
        if not knobs:
            break
        for knob in dict.fromkeys(k for k in knobs if k is not None):
            if tried.get(knob) == current.config or current.config.changed(knob) == \
                    current.config:  # already applied
                continue
            if deadline is not None and time.monotonic() + last_trial_s > deadline:
                log(f"{knob}: not tried: out of time (the auto-tune's share of --budget)")
                result.trials.append(Trial(knob, {}, [], 0.0, 0.0, False, "out of time"))
                break
            trial_started = time.monotonic()
            tried[knob] = current.config
            candidate = Runner(data_root, current.config.changed(knob), settings.steps,
                               backbone_weights=backbone_weights)
            a, b = interleaved([current, candidate], settings.rounds)
            ratios = [y / x for x, y in zip(a, b, strict=True)]
            kept, gain, noise, reason = decide(ratios)
            # Inconclusive (a gain within the noise, or rounds too spread to rule one out):
            # more rounds before deciding.
            while not kept and max(gain, noise) >= MIN_GAIN and len(ratios) < settings.max_rounds:
                a, b = interleaved([current, candidate], 1)
                ratios.append(b[0] / a[0])
                kept, gain, noise, reason = decide(ratios)
            result.trials.append(Trial(knob, candidate.config.describe(), ratios, gain, noise,
                                       kept, reason))
            log(f"{knob}: {'kept' if kept else 'dropped'}: {reason}")
            old = current if kept else candidate
            current = candidate if kept else current
            old.close()
            last_trial_s = time.monotonic() - trial_started
        if result.trials and result.trials[-1].reason == "out of time":
            break
        analysis = profile_config(current)
    current.close()
    result.final = asdict(current.config)
    return result


def save(result: TuneResult, out_dir: Path, ceiling: float | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if ceiling is not None:
        (out_dir / REPLAY_FILE).write_text(json.dumps({"samples_per_s": ceiling}))
    path = out_dir / AUTOTUNE_FILE
    path.write_text(json.dumps(result.to_json(), indent=2))
    return path

