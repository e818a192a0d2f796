"""The leaderboard: every trial of a study with its candidate, parameters, validation metric,
time and why it stopped; saved as ``leaderboard.json`` in the run directory and printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..errors import NotFound

LEADERBOARD_FILE = "leaderboard.json"


def rows_from_study(study: Any) -> list[dict[str, Any]]:
    """One row per trial, best first (completed trials by value, then the others by number)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        seconds = attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        retry_of = t.system_attrs.get("failed_trial", attrs.get("retry_of"))
        rows.append({
            "trial": t.number,
            "candidate": attrs.get("candidate", t.params.get("candidate", "?")),
            "kind": attrs.get("kind", ""),
            "state": t.state.name.lower(),
            "score": t.value if t.value is not None else None,
            "seconds": round(float(seconds), 1) if seconds is not None else None,
            "stop_reason": attrs.get("stop_reason", _default_reason(t.state.name)),
            "params": attrs.get("params", {k: v for k, v in t.params.items()
                                           if k != "candidate"}),
            "worker": attrs.get("worker", ""),
            **({"retry_of": retry_of} if retry_of is not None else {}),
        })
    done = sorted((r for r in rows if r["score"] is not None and r["state"] == "complete"),
                  key=lambda r: (-r["score"], r["trial"]))
    rest = sorted((r for r in rows if r not in done), key=lambda r: r["trial"])
    return done + rest


def _default_reason(state: str) -> str:
    return {"RUNNING": "running (or killed: retried on resume)", "WAITING": "queued",
            "FAIL": "failed", "PRUNED": "pruned", "COMPLETE": "completed"}.get(state, state)


def save(run_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    path = run_dir / LEADERBOARD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**summary, "trials": rows}, indent=2, default=str))
    tmp.replace(path)
    return path


def load(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / LEADERBOARD_FILE
    if not path.is_file():
        raise NotFound(f"{run_dir}: no {LEADERBOARD_FILE} (not a model-search run directory, or "
                       "the search has not finished a trial yet)")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _params_text(params: dict[str, Any]) -> str:
    out = []
    for key, value in params.items():
        short = key.split(".", 1)[-1]
        out.append(f"{short}={value:.2g}" if isinstance(value, float) else f"{short}={value}")
    return " ".join(out)


def print_leaderboard(board: dict[str, Any], console: Console) -> None:
    title = f"Leaderboard: {board.get('model', '')} ({board.get('task', '')})"
    if board.get("winner"):
        title += f" — winner trial {board['winner']['trial']} {board['winner']['candidate']}"
    table = Table(title=title)
    metric = f"val {board.get('metric', 'accuracy')}"
    for col in ("#", "candidate", metric, "seconds", "state", "why it stopped", "params"):
        table.add_column(col, justify="right" if col in ("#", metric, "seconds") else "left",
                         overflow="fold")
    for row in board["trials"]:
        acc = row.get("score", row.get("val_accuracy"))  # the previous release's name
        table.add_row(str(row["trial"]), row["candidate"],
                      "" if acc is None else f"{acc:.3f}",
                      "" if row["seconds"] is None else f"{row['seconds']:.0f}",
                      row["state"], str(row["stop_reason"]), _params_text(row["params"]))
    console.print(table)
    for note in board.get("notes", []):
        console.print(f"[cyan]note:[/] {note}")
