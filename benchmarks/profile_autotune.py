"""The profiler's acceptance benchmark: diagnose the defined bottlenecked configuration,
auto-tune it, and compare before / after / the replay ceiling in one run.

The bottlenecked configuration: MobileNetV2 frozen except its last block, batch 32,
the full-size hymenoptera JPEGs decoded with PIL in the main process (``num_workers=0``) and a
per-sample PIL transform chain (Resize, RandomCrop, RandomHorizontalFlip, ColorJitter,
ToTensor, Normalize). Steps:

1. profile it (step trace + pipeline instrumentation) and print the advisor's diagnosis;
2. ``autotune`` it (one change at a time, interleaved A/B rounds, keep ≥ 5 % beyond noise);
3. measure, in interleaved rounds, the initial config, the tuned config and the replay probe
   (the tuned training step on batches already in memory: the compute-only ceiling);
4. the profiler overhead by cost per event × events per step, against the tuned step time
   (the shortest step, so the largest percentage).

Prints a table with medians and spread and the CPU seconds other processes used meanwhile.

    nice -n 5 python benchmarks/profile_autotune.py [--rounds 3] [--steps 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _common import ForeignCpu, summary
from modelmint._profile.autotune import Runner, TuneSettings, autotune, interleaved, replay_probe
from modelmint._profile.overhead import overhead
from modelmint._profile.workload import WorkloadConfig
from modelmint._train.backbone import MOBILENET_V2, weights_path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per round")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    console = Console(stderr=args.json, width=120)
    foreign = ForeignCpu()
    started = time.monotonic()

    weights = weights_path(MOBILENET_V2)
    initial = WorkloadConfig()
    result = autotune(args.data, initial, TuneSettings(rounds=args.rounds, steps=args.steps),
                      log=lambda line: console.print(f"[dim]auto-tune[/] {line}"),
                      backbone_weights=weights)
    final = WorkloadConfig(**result.final)

    console.print("[dim]final comparison: initial vs tuned vs replay probe, interleaved[/]")
    before = Runner(args.data, initial, args.steps, backbone_weights=weights)
    after = Runner(args.data, final, args.steps, backbone_weights=weights)
    before_ips, after_ips, ceiling_ips = interleaved(
        [before, after], args.rounds, extra=[replay_probe(after)])
    after_steps = [s["total"] for s in after.tracer.steps]
    cost = overhead(statistics.median(after_steps), final.batch_size)
    before.close()
    after.close()

    rows = {"before": summary(before_ips), "after": summary(after_ips),
            "ceiling": summary(ceiling_ips)}
    table = Table(title=f"profile_autotune: {args.rounds} interleaved rounds x {args.steps} "
                        "steps, batch 32, images/s")
    for col in ("config", "median", "min", "max", "vs before"):
        table.add_column(col, justify="left" if col == "config" else "right")
    base = rows["before"]["median"]
    for name, row in rows.items():
        table.add_row(name, f"{row['median']:.1f}", f"{row['min']:.1f}", f"{row['max']:.1f}",
                      f"{row['median'] / base:.2f}x")
    console.print(table)
    for trial in result.trials:
        console.print(f"  {trial.knob:18} {'kept' if trial.kept else 'dropped':8} {trial.reason}")
    wall = time.monotonic() - started
    console.print(f"diagnosis: {result.diagnosis['classification']} "
                  f"({result.diagnosis['wait_share']:.0%} data wait), bottleneck stage "
                  f"{result.diagnosis['bottleneck_stage']}")
    console.print(f"tuned: { {k: v for k, v in result.final.items() if v != asdict(initial)[k]} }")
    console.print(f"after / before {rows['after']['median'] / base:.2f}x; after / ceiling "
                  f"{rows['after']['median'] / rows['ceiling']['median']:.0%}")
    console.print(f"profiler overhead {cost['overhead_pct']:.3f} % ({cost['method']}: "
                  f"{cost['cost_per_step_us']:.0f} µs a step of {cost['step_ms']:.0f} ms)")
    console.print(f"foreign CPU: {foreign.seconds():.0f} s over {wall:.0f} s wall "
                  f"({foreign.seconds() / wall:.2f} cores busy with other processes)")
    if args.json:
        sys.stdout.write(json.dumps({
            "before_ips": rows["before"]["median"], "after_ips": rows["after"]["median"],
            "ceiling_ips": rows["ceiling"]["median"], "overhead_pct": cost["overhead_pct"],
            "diagnosis": result.diagnosis, "rows": rows, "final": result.final,
            "trials": [asdict(t) for t in result.trials], "overhead": cost,
            "foreign_cpu_s": foreign.seconds(), "wall_s": wall}) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # DataLoader workers are daemons: they go with us
        sys.stderr.write("interrupted\n")
        sys.exit(130)
