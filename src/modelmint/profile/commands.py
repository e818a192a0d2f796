"""What ``mint train --profile / --auto-tune`` and ``mint profile RUN_DIR`` do, kept here so
the CLI and ``train/run.py`` only need one call each."""

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


def auto_tune_run(data_root: str | Path, run_dir: Path, console: Console) -> dict[str, object]:
    """Tune the DataLoader fine-tuning workload on the user's own images (see docs/profile.md):
    decode mode, caching, transform placement, channels_last, worker count. ``mint train``'s
    own recipe trains from cached activations (no input pipeline), so the kept settings are
    recorded in ``profile/autotune.json`` for image pipelines (the model search's fine-tuning
    trials) and printed."""
    from .autotune import TuneSettings, autotune, save
    from .workload import WorkloadConfig

    result = autotune(Path(data_root), WorkloadConfig(), TuneSettings(rounds=3, steps=3),
                      log=lambda line: console.print(f"[dim]auto-tune[/] {line}"))
    path = save(result, run_dir / PROFILE_DIR)
    kept = [t.knob for t in result.trials if t.kept]
    console.print(f"auto-tune kept: {', '.join(kept) or 'nothing'} ({path})")
    return result.final


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
