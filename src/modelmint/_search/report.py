"""The evaluation report of a search's winner (issue 6, item 8): ``report.json`` and a
self-contained ``report.html`` (inline SVG and CSS; no script, no CDN).

Per-class precision/recall/F1, the confusion matrix and the misclassified items come from the
spine's :func:`modelmint._train.evaluate.classification_report`; this module adds top-k accuracy,
one-vs-rest precision-recall curves (hand-written: a sort and two cumulative sums, which is all
sklearn's ``precision_recall_curve`` does), small-data warnings, the split used and the effect of
the "other" class on precision.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from .._data.dataset import TaskData
from .._train.evaluate import classification_report

MIN_VAL = 30
CURVE_POINTS = 60


def top_k_accuracy(truth: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    ranked = np.argsort(-probs, axis=1)
    out = {}
    for k in range(1, min(5, probs.shape[1]) + 1):
        hits = (ranked[:, :k] == truth[:, None]).any(axis=1)
        out[f"top{k}"] = float(hits.mean()) if len(truth) else 0.0
    return out


def pr_curve(positive: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """One-vs-rest precision-recall points (recall ascending) and average precision."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    tp = np.cumsum(hits)
    fp = np.cumsum(1.0 - hits)
    total = hits.sum()
    precision = tp / np.maximum(tp + fp, 1.0)
    recall = tp / total if total else np.zeros_like(tp)
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision)) if total else 0.0
    idx = np.unique(np.linspace(0, len(order) - 1, min(CURVE_POINTS, len(order))).astype(int))
    return {"recall": [round(float(r), 4) for r in recall[idx]],
            "precision": [round(float(p), 4) for p in precision[idx]],
            "average_precision": round(ap, 4)}


def reject_effect(truth: np.ndarray, probs: np.ndarray, labels: list[str],
                  reject: str) -> dict[str, Any]:
    """Precision of the known classes with the "other" class, and what it would be without it
    (every out-of-domain item forced onto its most likely known class)."""
    other = labels.index(reject)
    known = [i for i in range(len(labels)) if i != other]
    with_other = probs.argmax(1)
    without = np.asarray(known)[probs[:, known].argmax(1)]

    def known_precision(pred: np.ndarray) -> float:
        mask = pred != other
        return float((pred[mask] == truth[mask]).mean()) if mask.any() else 0.0

    ood = truth == other
    return {
        "reject_label": reject,
        "known_precision_with_reject": round(known_precision(with_other), 4),
        "known_precision_without_reject": round(known_precision(without), 4),
        "out_of_domain_val_items": int(ood.sum()),
        "out_of_domain_caught": int((with_other[ood] == other).sum()),
        "known_items_rejected": int(((with_other == other) & ~ood).sum()),
    }


def build_report(data: TaskData, probs: np.ndarray, winner: dict[str, Any],
                 board: dict[str, Any]) -> dict[str, Any]:
    truth = np.asarray([y for _, y in data.val], dtype=np.int64)
    items = [item for item, _ in data.val]
    evaluation = classification_report(truth, probs, data.labels, items)
    evaluation["top_k"] = top_k_accuracy(truth, probs)
    evaluation["pr_curves"] = {label: pr_curve(truth == i, probs[:, i])
                               for i, label in enumerate(data.labels)}
    warnings = list(data.warnings)
    if len(truth) < MIN_VAL:
        warnings.insert(0, f"only {len(truth)} validation items (< {MIN_VAL}): every figure in "
                           "this report is indicative only")
    report: dict[str, Any] = {
        "task": data.task, "labels": data.labels, "split": data.split_note,
        "counts": {"train": len(data.train), "val": len(data.val)},
        "winner": winner, "evaluation": evaluation, "warnings": warnings,
        "search": {k: board.get(k) for k in ("notes", "budget")} | {
            "trials": len(board.get("trials", []))},
        "indicative_only": len(truth) < MIN_VAL,
    }
    if data.reject_label:
        report["reject"] = reject_effect(truth, probs, data.labels, data.reject_label)
    return report


# --- HTML -----------------------------------------------------------------------------------
_CSS = """body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}.warn{color:#a60}
h2{margin-top:1.6em}svg{background:#fafafa;border:1px solid #ddd;margin:4px}"""
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _confusion_svg(labels: list[str], matrix: list[list[int]]) -> str:
    k, cell, pad = len(labels), 36 if len(labels) <= 12 else 18, 90
    size = pad + k * cell
    peak = max((max(row) for row in matrix), default=1) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 10}" height="{size + 10}">']
    for i, row in enumerate(matrix):
        parts.append(f'<text x="{pad - 4}" y="{pad + i * cell + cell * 0.6}" font-size="11" '
                     f'text-anchor="end">{_esc(labels[i][:12])}</text>')
        for j, n in enumerate(row):
            shade = int(255 - 200 * n / peak)
            parts.append(f'<rect x="{pad + j * cell}" y="{pad + i * cell}" width="{cell}" '
                         f'height="{cell}" fill="rgb({shade},{shade},255)"/>')
            if cell >= 30:
                x, y = pad + j * cell + cell / 2, pad + i * cell + cell * 0.6
                parts.append(f'<text x="{x}" y="{y}" font-size="11" text-anchor="middle">'
                             f'{n}</text>')
    for j, label in enumerate(labels):
        x = pad + j * cell + cell / 2
        parts.append(f'<text x="{x}" y="{pad - 6}" font-size="11" text-anchor="start" '
                     f'transform="rotate(-45 {x} {pad - 6})">{_esc(label[:12])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _pr_svg(curves: dict[str, dict[str, Any]]) -> str:
    w = h = 260
    m = 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 160}" height="{h + 20}">',
             f'<rect x="{m}" y="10" width="{w - m}" height="{h - m}" fill="none" stroke="#999"/>',
             f'<text x="{w / 2}" y="{h + 10}" font-size="11">recall</text>',
             f'<text x="2" y="{h / 2}" font-size="11">prec.</text>']
    for n, (label, curve) in enumerate(curves.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        points = " ".join(f"{m + r * (w - m):.1f},{10 + (1 - p) * (h - m):.1f}"
                          for r, p in zip(curve["recall"], curve["precision"], strict=True))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{points}"/>')
        parts.append(f'<text x="{w + 8}" y="{20 + 14 * n}" font-size="11" fill="{colour}">'
                     f'{_esc(label[:14])} AP {curve["average_precision"]:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict[str, Any], title: str) -> str:
    ev = report["evaluation"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"]
    winner = report.get("winner") or {}
    out.append(f"<p>Task: {_esc(report['task'])}. Winner: {_esc(winner.get('candidate', '?'))} "
               f"(trial {_esc(winner.get('trial', '?'))}). Split: {_esc(report['split'])} — "
               f"{report['counts']['train']} train, {report['counts']['val']} validation items."
               "</p>")
    for warning in report["warnings"]:
        out.append(f"<p class='warn'>⚠ {_esc(warning)}</p>")
    for note in report["search"].get("notes") or []:
        out.append(f"<p>{_esc(note)}</p>")
    out.append(f"<h2>Accuracy</h2><p>Accuracy {ev['accuracy']:.3f}, macro F1 "
               f"{ev['macro_f1']:.3f} on {ev['samples']} items.</p>")
    out.append(_table(list(ev["top_k"]), [[f"{v:.3f}" for v in ev["top_k"].values()]]))
    out.append("<h2>Per class</h2>" + _table(
        ["class", "precision", "recall", "F1", "support"],
        [[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
         for c, m in ev["per_class"].items()]))
    if "reject" in report:
        r = report["reject"]
        out.append("<h2>Effect of the “other” class</h2>" + _table(
            ["", "value"],
            [["precision of known classes, with 'other'", r["known_precision_with_reject"]],
             ["precision of known classes, without it", r["known_precision_without_reject"]],
             ["out-of-domain validation items caught",
              f"{r['out_of_domain_caught']} / {r['out_of_domain_val_items']}"],
             ["known items wrongly rejected", r["known_items_rejected"]]]))
    cm = ev["confusion_matrix"]
    out.append("<h2>Confusion matrix</h2><p>rows: true class, columns: predicted</p>")
    out.append(_confusion_svg(cm["labels"], cm["rows_true_cols_predicted"]))
    out.append("<h2>Precision-recall per class</h2>" + _pr_svg(ev["pr_curves"]))
    errors = ev["misclassified"]
    out.append(f"<h2>Misclassified ({len(errors)}, most confident first)</h2>")
    out.append(_table(["item", "true", "predicted", "score"],
                      [[e["file"], e["true"], e["predicted"], f"{e['score']:.2f}"]
                       for e in errors[:100]]))
    out.append("</body></html>")
    return "\n".join(out)
