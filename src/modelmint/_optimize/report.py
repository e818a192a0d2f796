"""The human-readable ``mint optimize`` report (the same data as ``optimize.json``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(row: dict[str, Any], batch: str, key: str) -> str:
    t = row["latency"].get(batch)
    return "-" if t is None else f"{t[key]:.1f}"


def print_report(report: dict[str, Any], console: Console) -> None:
    passes = Table(title="graph passes (node counts)")
    for col in ("pass", "source", "before", "after"):
        passes.add_column(col, justify="right" if col in ("before", "after") else "left")
    for p in report["passes"]:
        passes.add_row(p["pass"], p["source"], str(p["nodes_before"]), str(p["nodes_after"]))
    console.print(passes)

    quant = Table(title="INT8 variants (accuracy gate)")
    for col in ("variant", "val acc %", "drop pts", "agree %", "gate"):
        quant.add_column(col, justify="left" if col in ("variant", "gate") else "right")
    for q in report["quantization"]:
        quant.add_row(q["config"]["name"], f"{q['val_accuracy']}", f"{q['val_drop_points']}",
                      f"{q['agreement_with_fp32']}",
                      "[green]pass[/]" if q["passed"] else f"[red]fail[/]: {q['reason']}")
    console.print(quant)

    cands = Table(title=f"candidates ({report['settings']['rounds']} interleaved rounds; "
                        "spread = range of per-round medians / p50)")
    for col in ("candidate", "engine", "b1 p50", "b1 p99", "b8 p50", "b8 p99", "spread",
                "val acc %", "agree %"):
        cands.add_column(col, justify="left" if col in ("candidate", "engine") else "right")
    for row in report["candidates"]:
        spread = max(t["spread"] for t in row["latency"].values())
        name = row["candidate"] + (" [bold green]*[/]" if row["candidate"] == report["chosen"]
                                   else "")
        cands.add_row(name, row["engine"], _ms(row, "b1", "p50_ms"), _ms(row, "b1", "p99_ms"),
                      _ms(row, "b8", "p50_ms"), _ms(row, "b8", "p99_ms"), f"{spread:.0%}",
                      str(row["accuracy"]["val_accuracy"]),
                      str(row["accuracy"]["agreement_with_fp32"]))
    console.print(cands)
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[bold]chosen:[/] {report['chosen']} — {report['reason']}")
    if "version" in report:
        console.print(f"[green]published[/] {report['source']['model']} version "
                      f"{report['version']} (from version {report['source']['version']}; "
                      f"model.onnx = {report['published']})")
