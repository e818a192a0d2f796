"""Classification metrics for the evaluation report, computed by :mod:`sklearn.metrics`.

The functions here only shape sklearn's results into the report's JSON and cover the cases it
refuses: an empty validation set, a class absent from it, and top-k for k of at least the
number of classes (every item is a hit). sklearn is imported when a report is made, not with
this module, which every task plugin imports: ``mint`` starts without paying for sklearn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

MAX_TOP_K = 5
CURVE_POINTS = 60  # points kept per precision-recall curve: enough to draw it


def classification_report(y_true: np.ndarray, probs: np.ndarray, labels: list[str],
                          files: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_pred = probs.argmax(axis=1)
    k, n = len(labels), len(y_true)
    classes = list(range(k))
    if n:
        confusion = confusion_matrix(y_true, y_pred, labels=classes)
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=classes, zero_division=0)
        accuracy = float(accuracy_score(y_true, y_pred))
    else:  # sklearn refuses empty input; nothing to score is all zeros
        confusion = np.zeros((k, k), dtype=np.int64)
        precision = recall = f1 = np.zeros(k)
        support = np.zeros(k, dtype=np.int64)
        accuracy = 0.0
    per_class = {
        label: {"precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "support": int(support[i])}
        for i, label in enumerate(labels)}
    errors = [
        {"file": files[i], "true": labels[int(y_true[i])], "predicted": labels[int(y_pred[i])],
         "score": float(probs[i, y_pred[i]])}
        for i in np.flatnonzero(y_pred != y_true)
    ]
    errors.sort(key=lambda e: -float(e["score"]))  # type: ignore[arg-type]  # the most confident mistakes first
    return {
        "accuracy": accuracy,
        "samples": n,
        # Over every class, absent ones included (F1 0): a class never seen is not solved.
        "macro_f1": float(np.mean(f1)) if k else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "rows_true_cols_predicted": confusion.tolist()},
        "misclassified": errors,
    }


def top_k_accuracy(truth: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``top1`` .. ``top5`` (at most one per class): the share of items whose true class is
    among the k highest scores. ``top1`` is the argmax accuracy of the rest of the report."""
    from sklearn.metrics import accuracy_score, top_k_accuracy_score

    classes = probs.shape[1]
    out = {}
    for k in range(1, min(MAX_TOP_K, classes) + 1):
        if not len(truth):
            out[f"top{k}"] = 0.0
        elif k == 1:
            out[f"top{k}"] = float(accuracy_score(truth, probs.argmax(axis=1)))
        elif k >= classes:  # sklearn warns that this is trivially perfect; it is
            out[f"top{k}"] = 1.0
        else:
            out[f"top{k}"] = float(top_k_accuracy_score(truth, probs, k=k,
                                                        labels=list(range(classes))))
    return out


def pr_curve(positive: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """One-vs-rest precision-recall points (recall ascending, at most :data:`CURVE_POINTS`) and
    average precision. A class with no validation item has no curve and an AP of 0."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return {"recall": [], "precision": [], "average_precision": 0.0}
    precision, recall, _ = precision_recall_curve(positive, scores)
    precision, recall = precision[::-1], recall[::-1]  # sklearn lists recall descending
    keep = np.unique(np.linspace(0, len(recall) - 1, min(CURVE_POINTS, len(recall))).astype(int))
    return {"recall": [round(float(r), 4) for r in recall[keep]],
            "precision": [round(float(p), 4) for p in precision[keep]],
            "average_precision": round(float(average_precision_score(positive, scores)), 4)}


def print_report(report: dict[str, Any], console: Console, max_errors: int = 10) -> None:
    table = Table(title=f"Validation: accuracy {report['accuracy']:.1%} on {report['samples']} "
                        f"images, macro F1 {report['macro_f1']:.3f}")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for label, m in report["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                      str(m["support"]))
    console.print(table)
    labels = report["confusion_matrix"]["labels"]
    cm = Table(title="Confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for label in labels:
        cm.add_column(label, justify="right")
    for label, row in zip(labels, report["confusion_matrix"]["rows_true_cols_predicted"],
                          strict=True):
        cm.add_row(label, *map(str, row))
    console.print(cm)
    errors = report["misclassified"]
    if errors:
        console.print(f"{len(errors)} misclassified (most confident first):")
        for e in errors[:max_errors]:
            console.print(f"  {e['file']}: {e['true']} → {e['predicted']} ({e['score']:.2f})")
