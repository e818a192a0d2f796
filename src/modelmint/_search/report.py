"""A published version's evaluation report: ``report.json`` and a self-contained
``report.html`` (inline SVG and CSS; no script, no CDN). The frame is the same for every task
(what won, the split, warnings, the search's notes); the task draws its own sections."""

from __future__ import annotations

from typing import Any

from .._data.dataset import TaskData
from .._tasks.contract import Task
from .._tasks.html import CSS, esc

MIN_VAL = 30


def build_report(task: Task, data: TaskData, evaluation: dict[str, Any],
                 winner: dict[str, Any], board: dict[str, Any]) -> dict[str, Any]:
    warnings = list(data.warnings)
    small = len(data.val) < MIN_VAL
    if small:
        warnings.insert(0, f"only {len(data.val)} validation items (< {MIN_VAL}): every figure "
                           "in this report is indicative only")
    return {
        "task": data.task, "metric": task.metric, "labels": data.labels,
        "split": data.split_note, "counts": {"train": len(data.train), "val": len(data.val)},
        "winner": winner, "evaluation": evaluation, "warnings": warnings,
        "search": {k: board.get(k) for k in ("notes", "budget", "plan")} | {
            "trials": len(board.get("trials", []))},
        "indicative_only": small,
    }


def render_html(report: dict[str, Any], title: str, task: Task) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"]
    winner = report.get("winner") or {}
    out.append(f"<p>Task: {esc(report['task'])}. Winner: {esc(winner.get('candidate', '?'))} "
               f"(trial {esc(winner.get('trial', '?'))}). Split: {esc(report['split'])} — "
               f"{report['counts']['train']} train, {report['counts']['val']} validation items."
               "</p>")
    for warning in report["warnings"]:
        out.append(f"<p class='warn'>⚠ {esc(warning)}</p>")
    for note in report["search"].get("notes") or []:
        out.append(f"<p>{esc(note)}</p>")
    out.append(task.report_html(report))
    out.append("</body></html>")
    return "\n".join(out)
