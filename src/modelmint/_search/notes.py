"""What the leaderboard says in words: did fine-tuning beat the baseline, and why a candidate
never finished a trial."""

from __future__ import annotations

from typing import Any


def notes_for(rows: list[dict[str, Any]], fixed: bool) -> list[str]:
    if fixed:
        done = [r for r in rows if r["state"] == "complete"]
        if not done:
            return [f"the fixed recipe did not finish ({rows[-1]['stop_reason']})" if rows
                    else "the fixed recipe did not run"]
        return [f"fixed recipe {done[0]['candidate']} with the plan's parameters (no search)"]
    return _beat_baseline(rows) + _unfinished(rows)


def _unfinished(rows: list[dict[str, Any]]) -> list[str]:
    """One line per candidate that never completed a trial: why (its last trial's reason)."""
    last: dict[str, str] = {}
    done = {r["candidate"] for r in rows if r["state"] == "complete"}
    for row in rows:
        if row["candidate"] not in done:
            last[row["candidate"]] = str(row["stop_reason"])
    return [f"{name} did not finish a trial: {why}" for name, why in last.items()]


def _beat_baseline(rows: list[dict[str, Any]]) -> list[str]:
    """Did fine-tuning beat the frozen baseline, and if not, why not."""
    done = [r for r in rows if r["state"] == "complete" and r["score"] is not None]
    base = [r for r in done if r["kind"] == "baseline"]
    tuned = [r for r in done if r["kind"] != "baseline"
             and not str(r["stop_reason"]).startswith("no fine-tuning epoch")]
    if not base:
        return ["no baseline trial completed"]
    best_base = max(base, key=lambda r: r["score"])
    if not tuned:
        tried = [r for r in rows if r["kind"] != "baseline"]
        why = (f"fine-tuning trials did not finish ({tried[-1]['stop_reason']})" if tried else
               "the budget left no room for a fine-tuning trial after the baselines; raise "
               "--budget")
        return [f"winner is the baseline {best_base['candidate']} "
                f"({best_base['score']:.3f}): {why}"]
    best_tuned = max(tuned, key=lambda r: r["score"])
    delta = best_tuned["score"] - best_base["score"]
    if delta > 0:
        return [f"fine-tuning ({best_tuned['candidate']}, {best_tuned['score']:.3f}) beat "
                f"the frozen baseline ({best_base['score']:.3f}) by {delta:+.3f}"]
    return [f"fine-tuning did not beat the frozen baseline ({best_tuned['score']:.3f} vs "
            f"{best_base['score']:.3f}) in {len(tuned)} trial(s): the validation set "
            "cannot tell them apart or the budget allowed too few epochs"]
