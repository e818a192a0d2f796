"""What the three classification tasks share: scoring, the report's sections, the terminal
summary, the metrics a version records. Each classification task module builds its
:class:`~modelmint._tasks.contract.Task` with :func:`classification_task`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from .._data.dataset import TaskData
from .._train.evaluate import classification_report, pr_curve, print_report, top_k_accuracy
from .contract import Candidate, LoadOptions, Task
from .html import curves_svg, esc, table

METRIC = "accuracy"


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


def evaluate(data: TaskData, probs: Any) -> dict[str, Any]:
    """Accuracy, per-class P/R/F1, confusion matrix, misclassified items, top-k, PR curves and,
    with an "other" class, its effect on the known classes' precision."""
    probs = np.asarray(probs)
    truth = np.asarray([y for _, y in data.val], dtype=np.int64)
    evaluation = classification_report(truth, probs, data.labels, [i for i, _ in data.val])
    evaluation["top_k"] = top_k_accuracy(truth, probs)
    evaluation["pr_curves"] = {label: pr_curve(truth == i, probs[:, i])
                               for i, label in enumerate(data.labels)}
    if data.reject_label:
        evaluation["reject"] = reject_effect(truth, probs, data.labels, data.reject_label)
    return evaluation


def version_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {"val_accuracy": evaluation["accuracy"], "macro_f1": evaluation["macro_f1"],
            "val_samples": evaluation["samples"], **evaluation["top_k"]}


def _confusion_svg(labels: list[str], matrix: list[list[int]]) -> str:
    k, cell, pad = len(labels), 36 if len(labels) <= 12 else 18, 90
    size = pad + k * cell
    peak = max((max(row) for row in matrix), default=1) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 10}" height="{size + 10}">']
    for i, row in enumerate(matrix):
        parts.append(f'<text x="{pad - 4}" y="{pad + i * cell + cell * 0.6}" font-size="11" '
                     f'text-anchor="end">{esc(labels[i][:12])}</text>')
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
                     f'transform="rotate(-45 {x} {pad - 6})">{esc(label[:12])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def report_html(report: dict[str, Any]) -> str:
    ev = report["evaluation"]
    out = [f"<h2>Accuracy</h2><p>Accuracy {ev['accuracy']:.3f}, macro F1 "
           f"{ev['macro_f1']:.3f} on {ev['samples']} items.</p>",
           table(list(ev["top_k"]), [[f"{v:.3f}" for v in ev["top_k"].values()]]),
           "<h2>Per class</h2>" + table(
               ["class", "precision", "recall", "F1", "support"],
               [[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                 m["support"]] for c, m in ev["per_class"].items()])]
    if "reject" in ev:
        r = ev["reject"]
        out.append("<h2>Effect of the “other” class</h2>" + table(
            ["", "value"],
            [["precision of known classes, with 'other'", r["known_precision_with_reject"]],
             ["precision of known classes, without it", r["known_precision_without_reject"]],
             ["out-of-domain validation items caught",
              f"{r['out_of_domain_caught']} / {r['out_of_domain_val_items']}"],
             ["known items wrongly rejected", r["known_items_rejected"]]]))
    cm = ev["confusion_matrix"]
    out.append("<h2>Confusion matrix</h2><p>rows: true class, columns: predicted</p>")
    out.append(_confusion_svg(cm["labels"], cm["rows_true_cols_predicted"]))
    out.append("<h2>Precision-recall per class</h2>"
               + curves_svg(ev["pr_curves"], "recall", "precision", "average_precision"))
    errors = ev["misclassified"]
    out.append(f"<h2>Misclassified ({len(errors)}, most confident first)</h2>")
    out.append(table(["item", "true", "predicted", "score"],
                     [[e["file"], e["true"], e["predicted"], f"{e['score']:.2f}"]
                      for e in errors[:100]]))
    return "\n".join(out)


def classification_task(name: str, describe: str, detect: Callable[[Path], int],
                        load: Callable[[Path, LoadOptions], TaskData],
                        candidates: Callable[[], Sequence[Candidate]],
                        fixed_plan: Callable[[int], tuple[str, dict[str, Any]]] | None,
                        options: frozenset[str],
                        auto_tune: Callable[[TaskData, Path, Console, float], None] | None = None
                        ) -> Task:
    return Task(name=name, describe=describe, detect=detect, load=load, candidates=candidates,
                metric=METRIC, evaluate=evaluate, report_html=report_html,
                print_report=print_report, version_metrics=version_metrics, signature=None,
                fixed_plan=fixed_plan, options=options, auto_tune=auto_tune)


def count_files(root: Path, suffixes: frozenset[str] | tuple[str, ...]) -> int:
    """Evidence for a folder task: how many files below ``root`` have one of ``suffixes``."""
    if not root.is_dir():
        return 0
    return sum(1 for f in root.rglob("*") if f.suffix.lower() in suffixes)


def with_reject_class(data: TaskData, options: LoadOptions,
                      suffixes: frozenset[str]) -> TaskData:
    """Add the "other" class of ``--reject-dir`` (files of ``suffixes``, any layout)."""
    if options.reject_dir is not None:
        from .._data.layout import add_reject_class

        add_reject_class(data, options.reject_dir, suffixes=suffixes, seed=options.seed,
                         group_by=options.group_by)
    return data
