"""The human-readable ``mint optimize`` report (the same data as ``optimize.json``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(row: dict[str, Any], batch: str, key: str) -> str:
    t = row["latency"].get(batch)
    return "-" if t is None else f"{t[key]:.1f}"


def _accuracy(figures: dict[str, Any], detector: bool) -> list[str]:
    """A gate's figures as table cells: a detector's mAP, drop and box IoU against FP32, or a
    classifier's accuracy, drop and agreement."""
    if detector:
        iou = figures["box_iou_vs_fp32"]
        return [str(figures["map50"]), str(figures["map50_95"]),
                str(figures["map50_drop_points"]),
                "-" if iou["mean"] is None else f"{iou['mean']:.3f} / {iou['min']:.3f}"]
    return [str(figures["val_accuracy"]), str(figures["val_drop_points"]),
            str(figures["agreement_with_fp32"])]


def print_report(report: dict[str, Any], console: Console) -> None:
    passes = Table(title="graph passes (node counts)")
    for col in ("pass", "source", "before", "after"):
        passes.add_column(col, justify="right" if col in ("before", "after") else "left")
    for p in report["passes"]:
        passes.add_row(p["pass"], p["source"], str(p["nodes_before"]), str(p["nodes_after"]))
    console.print(passes)

    detector = report.get("task") == "object-detection"
    figures = (["mAP@.5", "mAP@[.5:.95]", "drop pts", "IoU vs FP32 mean / min"] if detector
               else ["val acc %", "drop pts", "agree %"])
    quant = Table(title="INT8 variants (accuracy gate)")
    for col in ("variant", *figures, "gate"):
        quant.add_column(col, justify="left" if col in ("variant", "gate") else "right")
    for q in report["quantization"]:
        quant.add_row(q["config"]["name"], *_accuracy(q, detector),
                      "[green]pass[/]" if q["passed"] else f"[red]fail[/]: {q['reason']}")
    console.print(quant)

    cands = Table(title=f"candidates ({report['settings']['rounds']} interleaved rounds; "
                        "spread = range of per-round medians / p50)")
    for col in ("candidate", "engine", "b1 p50", "b1 p99", "b8 p50", "b8 p99", "spread",
                *(figures[:2] if detector else [figures[0], figures[2]])):
        cands.add_column(col, justify="left" if col in ("candidate", "engine") else "right")
    for row in report["candidates"]:
        spread = max(t["spread"] for t in row["latency"].values())
        name = row["candidate"] + (" [bold green]*[/]" if row["candidate"] == report["chosen"]
                                   else "")
        cands.add_row(name, row["engine"], _ms(row, "b1", "p50_ms"), _ms(row, "b1", "p99_ms"),
                      _ms(row, "b8", "p50_ms"), _ms(row, "b8", "p99_ms"), f"{spread:.0%}",
                      *(_accuracy(row["accuracy"], detector)[:2] if detector else
                        _accuracy(row["accuracy"], detector)[::2]))
    console.print(cands)
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[bold]chosen:[/] {report['chosen']} — {report['reason']}")
    if "version" in report:
        console.print(f"[green]published[/] {report['source']['model']} version "
                      f"{report['version']} (from version {report['source']['version']}; "
                      f"model.onnx = {report['published']})")
