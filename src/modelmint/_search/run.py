"""``mint train`` with a budget: search → report → publish the winner; and ``--resume``."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import DataError
from . import leaderboard
from .driver import SearchOptions, _write_run, read_run, run_search
from .publish import REPORT_HTML, publish_winner
from .report import build_report, render_html


def search(opts: SearchOptions, console: Console, started: float | None = None,
           resume_dir: Path | None = None) -> dict[str, Any]:
    """Run the search and publish its winner; returns what ``mint train --json`` prints."""
    started = time.monotonic() if started is None else started
    outcome = run_search(opts, console, started, resume_dir)
    run_dir, data, board = outcome.run_dir, outcome.data, outcome.board
    leaderboard.print_leaderboard(board, console)
    result: dict[str, Any] = {
        "model": opts.name, "task": data.task, "run_dir": str(run_dir),
        "trials": board["trials"], "winner": board["winner"], "split": data.split_note,
        "notes": board["notes"], "warnings": data.warnings,
    }
    if opts.worker:
        _write_run(run_dir, opts, "worker-done", seconds=round(time.monotonic() - started, 2))
        result.update(version=None, seconds=round(time.monotonic() - started, 2))
        return result
    if outcome.fitted is None or outcome.winner is None:
        _write_run(run_dir, opts, "failed")
        raise DataError(f"no trial finished within --budget {opts.budget:g}s (see "
                        f"{run_dir / leaderboard.LEADERBOARD_FILE}); raise the budget")
    fitted, winner = outcome.fitted, outcome.winner
    winner_info = {**board["winner"], "architecture": fitted.architecture,
                   "params": fitted.params}
    report = build_report(data, fitted.val_probabilities(), winner_info, board)
    html_text = render_html(report, f"{opts.name}: evaluation report")
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    (run_dir / REPORT_HTML).write_text(html_text)
    provenance = {
        "data_root": str(data.root), "split_source": data.split_note,
        "split": {"train": [[f, data.labels[y]] for f, y in data.train],
                  "val": [[f, data.labels[y]] for f, y in data.val]},
        "search": {"run_dir": str(run_dir), "trial": winner.number,
                   "candidate": winner.user_attrs.get("candidate"), "budget": opts.budget,
                   "trials": len(board["trials"]), "seed": opts.seed},
        "hyperparameters": fitted.params,
    }
    console.print(f"publishing trial {winner.number} ({time.monotonic() - started:.0f}s)")
    version, path = publish_winner(opts.repo, opts.name, data, fitted, report, html_text,
                                   provenance)
    seconds = round(time.monotonic() - started, 2)
    _write_run(run_dir, opts, "published", version=version, seconds=seconds)
    result.update(version=version, val_accuracy=report["evaluation"]["accuracy"],
                  train_seconds=seconds, seconds=seconds, version_dir=str(path),
                  report=report)
    return result


def resume_search(run_dir: Path, console: Console, budget: float | None = None,
                  started: float | None = None) -> dict[str, Any]:
    saved = read_run(run_dir)
    if saved.get("status") == "published":
        raise DataError(f"{run_dir}: this search already published version "
                        f"{saved.get('version')}; start a new run instead")
    known = {f.name for f in fields(SearchOptions)}
    opts = SearchOptions(**{k: v for k, v in saved["options"].items() if k in known})
    if budget is not None:
        opts.budget = budget
    return search(opts, console, started, resume_dir=run_dir)


def is_search_run(run_dir: Path) -> bool:
    try:
        return read_run(run_dir).get("kind") == "search"
    except Exception:
        return False
