"""Classification metrics for the evaluation report (a few lines of NumPy, so no sklearn)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def classification_report(y_true: np.ndarray, probs: np.ndarray, labels: list[str],
                          files: list[str]) -> dict[str, Any]:
    y_pred = probs.argmax(axis=1)
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    for i, label in enumerate(labels):
        tp = int(confusion[i, i])
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    errors = [
        {"file": files[i], "true": labels[int(y_true[i])], "predicted": labels[int(y_pred[i])],
         "score": float(probs[i, y_pred[i]])}
        for i in np.flatnonzero(y_pred != y_true)
    ]
    errors.sort(key=lambda e: -float(e["score"]))  # type: ignore[arg-type]  # the most confident mistakes first
    n = len(y_true)
    return {
        "accuracy": float((y_pred == y_true).mean()) if n else 0.0,
        "samples": n,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])) if k else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "rows_true_cols_predicted": confusion.tolist()},
        "misclassified": errors,
    }


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
