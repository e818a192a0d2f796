"""What ``mint train --profile / --auto-tune`` and ``mint profile RUN_DIR`` do, kept here so
the commands that offer them only need one call each."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .advisor import Analysis, analyze
from .deep import DeepCaptureConfig
from .report import write_report
from .trace import PROFILE_DIR, StepTracer


def tracer_for_run(run_dir: Path, profile: bool) -> StepTracer:
    """The step trace is always on (``profile/`` is always written); ``--profile`` adds the
    torch.profiler window and the report."""
    return StepTracer(run_dir, deep=DeepCaptureConfig() if profile else None)


def finish_run(tracer: StepTracer, run_dir: Path, profile: bool, console: Console) -> None:
    tracer.close()
    if profile and tracer.steps:
        html = write_report(run_dir / PROFILE_DIR)
        print_analysis(analyze(run_dir / PROFILE_DIR), console)
        console.print(f"profile report: {html}")


# What each auto-tune knob means for ``mint train``'s own recipe, which decodes every image
# once and caches the frozen prefix's activations (no per-epoch input pipeline to tune).
TRAINER_KNOBS: dict[str, str] = {
    "frozen_onnxruntime": "already on: ONNX Runtime runs the frozen prefix that fills the "
                          "activation cache",
    "channels_last": "already on: the cache's prefix runs channels_last",
    "cache_decoded": "already on: each image is decoded once and its activations cached",
    "num_workers": "already on: the data check decodes on a thread pool",
    "tensor_transforms": "not applicable: augmentation is a fixed set of cached views",
    "draft_decode": "not applied: served models decode at full size, so training on "
                    "draft-decoded pixels would differ from serving",
}


def auto_tune_run(data_root: str | Path, run_dir: Path, console: Console,
                  deadline: float | None = None, *, backbone_weights: Path) -> dict[str, str]:
    """Tune the DataLoader fine-tuning workload on the user's own images (see docs/profile.md)
    and return what each kept change means for ``mint train`` (:data:`TRAINER_KNOBS`).
    Everything is saved in
    ``profile/autotune.json``, the config for DataLoader pipelines included. ``deadline``
    (``time.monotonic()``): no new change is tried after it (the search gives it a third of
    ``--budget``). ``backbone_weights``: the ImageNet MobileNetV2 state dict the workload
    fine-tunes (the trainer's ``weights_path(MOBILENET_V2)``)."""
    import json

    from .autotune import TuneSettings, autotune, save
    from .workload import WorkloadConfig

    result = autotune(Path(data_root), WorkloadConfig(), TuneSettings(rounds=3, steps=3),
                      log=lambda line: console.print(f"[dim]auto-tune[/] {line}"),
                      deadline=deadline, backbone_weights=backbone_weights)
    path = save(result, run_dir / PROFILE_DIR)
    kept = [t.knob for t in result.trials if t.kept]
    trainer = {knob: TRAINER_KNOBS.get(knob, "not applicable") for knob in kept}
    path.write_text(json.dumps({**result.to_json(), "trainer": trainer}, indent=2))
    console.print(f"auto-tune kept: {', '.join(kept) or 'nothing'} ({path})")
    for knob, meaning in trainer.items():
        console.print(f"  {knob}: {meaning}")
    return trainer


def print_analysis(analysis: Analysis, console: Console) -> None:
    s = analysis.summary
    console.print(f"[bold]{analysis.classification}[/] (severity {analysis.severity}): data "
                  f"wait {analysis.wait_share:.1%} of step time; bottleneck stage "
                  f"{analysis.bottleneck_stage}; {analysis.samples_per_s:.1f} samples/s over "
                  f"{s['steps']} steps (median {1000 * s['median_step_s']:.2f} ms)")
    if analysis.ceiling_samples_per_s:
        console.print(f"compute-only ceiling: {analysis.ceiling_samples_per_s:.1f} samples/s "
                      f"({analysis.ceiling_source})")
    table = Table(title="step parts")
    for col in ("part", "median ms", "share"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for part, row in s["parts"].items():
        table.add_row(part, f"{1000 * row['median_s']:.2f}", f"{row['share']:.1%}")
    console.print(table)
    for i, advice in enumerate(analysis.advice, 1):
        console.print(f"{i}. [bold]\\[{advice.severity}] {advice.title}[/]\n"
                      f"   evidence: {advice.evidence}\n   setting: {advice.setting}")
    for note in analysis.notes:
        console.print(f"[dim]note: {note}[/]")
