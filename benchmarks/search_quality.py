"""Search quality per sample set and budget: what ``mint train --budget`` finds.

For each sample set and budget (60 s and 300 s by default) it runs ``mint train`` as a user would
(a fresh process; the whole command timed) and reports the winner's validation accuracy, the
number of trials, the winner, and the frozen-baseline score from the same run — the peer every
fine-tuning trial has to beat. With ``--rounds N`` the (set, budget) runs are interleaved N times
and medians/spread are printed. Also reported: the CPU seconds other processes used meanwhile
(on a shared machine, a busy neighbour shortens every budget).

    python benchmarks/search_quality.py [--sets hymenoptera digits digits-grouped spam]
                                        [--budgets 60 300] [--rounds 1] [--json]

Targets (2-core CPU): hymenoptera >= 95 % in 300 s; spoken digits >= 98 % (random
split) and >= 85 % (speakers held out) in 300 s; SMS spam >= 99 % accuracy and spam F1 >= 0.95
in 120 s ("worst F1" is the lowest per-class F1 of the published winner).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _common import ForeignCpu, summary

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SETS: dict[str, tuple[Path, list[str]]] = {
    "hymenoptera": (SHARED / "hymenoptera", []),
    "digits": (SHARED / "spoken_digits", []),
    "digits-grouped": (SHARED / "spoken_digits", ["--group-by", "_([a-z]+)_"]),
    "spam": (SHARED / "sms_spam" / "sms_spam.tsv", []),
}


def run_once(name: str, budget: float, work: Path) -> dict[str, Any]:
    data, extra = SETS[name]
    cmd = [sys.executable, "-m", "modelmint.cli", "train", str(data), "--name",
           name.replace("-", ""), "--repo", str(work / "models"), "--runs-dir",
           str(work / "runs"), "--budget", str(budget), "--json", *extra]
    foreign = ForeignCpu()
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - started
    row: dict[str, Any] = {"set": name, "budget": budget, "wall_s": round(wall, 1),
                           "foreign_cpu_s": round(foreign.seconds(), 1)}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        return row
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    trials = out["trials"]
    baselines = [t["val_accuracy"] for t in trials
                 if t["kind"] == "baseline" and t["val_accuracy"] is not None]
    tuned = [t["val_accuracy"] for t in trials
             if t["kind"] != "baseline" and t["val_accuracy"] is not None]
    row.update(best=out["val_accuracy"], trials=len(trials),
               finetune_trials=len([t for t in trials if t["kind"] != "baseline"]),
               winner=out["winner"]["candidate"],
               baseline=max(baselines) if baselines else None,
               best_finetune=max(tuned) if tuned else None,
               split=out["split"], notes=out["notes"])
    report_file = Path(out.get("version_dir") or work) / "report.json"
    if report_file.is_file():  # per-class F1: the SMS target is on the spam class's F1
        per_class = json.loads(report_file.read_text())["evaluation"]["per_class"]
        row["f1"] = {c: round(float(m["f1"]), 4) for c, m in per_class.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[60.0, 300.0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=args.json, width=160)  # the table has eleven columns
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="search-quality-") as tmp:
        for rnd in range(args.rounds):  # interleaved: every (set, budget) once per round
            for name in args.sets:
                for budget in args.budgets:
                    row = run_once(name, budget, Path(tmp) / f"{name}-{budget:g}-{rnd}")
                    row["round"] = rnd
                    rows.append(row)
                    console.print(f"round {rnd} {name} {budget:g}s: "
                                  f"{row.get('best', row.get('error'))} "
                                  f"{row.get('winner', '')} f1={row.get('f1', {})}")
    table = Table(title="mint train --budget: search quality (validation accuracy)")
    for col in ("set", "budget s", "best (median)", "spread", "frozen baseline",
                "best fine-tune", "worst F1", "trials", "winner", "wall s", "foreign CPU s"):
        table.add_column(col, justify="left" if col in ("set", "winner") else "right")
    for name in args.sets:
        for budget in args.budgets:
            mine = [r for r in rows if r["set"] == name and r["budget"] == budget]
            ok = [r for r in mine if "best" in r]
            if not ok:
                table.add_row(name, f"{budget:g}", "error", "", "", "", "", "",
                              mine[0]["error"], "", "")
                continue
            best = summary([r["best"] for r in ok])
            last = ok[-1]
            def fmt(v: float | None) -> str:
                return "" if v is None else f"{v:.3f}"
            table.add_row(name, f"{budget:g}", f"{best['median']:.3f}", f"{best['spread']:.3f}",
                          fmt(last["baseline"]), fmt(last["best_finetune"]),
                          fmt(min(last["f1"].values()) if last.get("f1") else None),
                          str(last["trials"]), last["winner"],
                          f"{summary([r['wall_s'] for r in ok])['median']:.0f}",
                          f"{summary([r['foreign_cpu_s'] for r in ok])['median']:.0f}")
    console.print(table)
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
