"""The evaluation metrics against a plain computation from their definitions, on random
predictions: any number of classes, classes missing from the validation set, a validation set
of one class or none, and coarse scores full of ties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelmint._train.evaluate import (
    CURVE_POINTS,
    classification_report,
    pr_curve,
    top_k_accuracy,
)


@st.composite
def predictions(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """``(truth, probs)``: true class indices and one row of class probabilities per item
    (two classes or more: the data loaders refuse fewer)."""
    k = draw(st.integers(2, 7))
    n = draw(st.integers(0, 40))
    present = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    truth = np.array(draw(st.lists(st.sampled_from(present), min_size=n, max_size=n)),
                     dtype=np.int64)
    probs = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).dirichlet(np.ones(k), n)
    if draw(st.booleans()):
        probs = np.round(probs, 1)  # few distinct values: ties within and across items
    return truth, probs.reshape(n, k)


def by_definition(truth: np.ndarray, probs: np.ndarray) -> dict[str, object]:
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    confusion = [[sum(1 for t, p in zip(truth, pred, strict=True) if t == i and p == j)
                  for j in range(k)] for i in range(k)]
    per_class = {}
    for i in range(k):
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(k))
        actual = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[f"c{i}"] = {"precision": precision, "recall": recall, "f1": f1,
                              "support": actual}
    hits = sum(confusion[i][i] for i in range(k))
    return {"confusion": confusion, "per_class": per_class,
            "accuracy": hits / len(truth) if len(truth) else 0.0,
            "macro_f1": sum(c["f1"] for c in per_class.values()) / k}


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# sklearn warns about undefined metrics (no prediction of a class, k >= classes...): the report
# handles each of those cases itself, so any warning is a case it missed.
pytestmark = pytest.mark.filterwarnings("error")


@SETTINGS
@given(predictions())
def test_classification_report_matches_the_definitions(
        data: tuple[np.ndarray, np.ndarray]) -> None:
    truth, probs = data
    k = probs.shape[1]
    labels = [f"c{i}" for i in range(k)]
    report = classification_report(truth, probs, labels, [f"item{j}" for j in range(len(truth))])
    expected = by_definition(truth, probs)
    assert report["samples"] == len(truth)
    assert report["confusion_matrix"] == {"labels": labels,
                                          "rows_true_cols_predicted": expected["confusion"]}
    assert np.isclose(report["accuracy"], expected["accuracy"])
    assert np.isclose(report["macro_f1"], expected["macro_f1"])
    assert list(report["per_class"]) == labels
    for label, metrics in report["per_class"].items():
        want = expected["per_class"][label]  # type: ignore[index]
        assert metrics["support"] == want["support"] and isinstance(metrics["support"], int)
        for key in ("precision", "recall", "f1"):
            assert np.isclose(metrics[key], want[key]), (label, key, metrics, want)
    wrong = report["misclassified"]
    assert len(wrong) == len(truth) - np.trace(np.array(expected["confusion"]).reshape(k, k))
    assert [e["score"] for e in wrong] == sorted((e["score"] for e in wrong), reverse=True)


@SETTINGS
@given(predictions())
def test_top_k_accuracy_matches_the_definition(data: tuple[np.ndarray, np.ndarray]) -> None:
    truth, probs = data
    k = probs.shape[1]
    scores = top_k_accuracy(truth, probs)
    assert list(scores) == [f"top{i}" for i in range(1, min(5, k) + 1)]
    own = probs[np.arange(len(truth)), truth]
    above = (probs > own[:, None]).sum(axis=1)  # classes ranked surely before the true one
    tied = (probs == own[:, None]).sum(axis=1) - 1  # ranked before or after: either is right
    for name, value in scores.items():
        depth = int(name.removeprefix("top"))
        if not len(truth):
            assert value == 0.0
            continue
        best, worst = float(np.mean(above < depth)), float(np.mean(above + tied < depth))
        assert worst - 1e-12 <= value <= best + 1e-12, (name, value, worst, best)
    if len(truth):
        assert scores["top1"] == classification_report(
            truth, probs, [f"c{i}" for i in range(k)], ["x"] * len(truth))["accuracy"]


def precision_recall_by_threshold(positive: np.ndarray, scores: np.ndarray
                                  ) -> tuple[list[tuple[float, float]], float]:
    """Every (recall, precision) point, from the highest threshold down, and the average
    precision: the sum over thresholds of (recall gained) × (precision there)."""
    total = int(positive.sum())
    points, ap, last_recall = [(0.0, 1.0)], 0.0, 0.0
    for threshold in sorted(set(scores.tolist()), reverse=True):
        chosen = scores >= threshold
        hits = int((positive & chosen).sum())
        recall, precision = hits / total, hits / int(chosen.sum())
        points.append((recall, precision))
        ap += (recall - last_recall) * precision
        last_recall = recall
    return points, ap


@SETTINGS
@given(predictions(), st.integers(0, 6))
def test_pr_curve_matches_the_definition(data: tuple[np.ndarray, np.ndarray],
                                         which: int) -> None:
    truth, probs = data
    cls = which % probs.shape[1]
    positive, scores = truth == cls, probs[:, cls]
    curve = pr_curve(positive, scores)
    if not positive.any():
        assert curve == {"recall": [], "precision": [], "average_precision": 0.0}
        return
    points, ap = precision_recall_by_threshold(positive, scores)
    assert abs(curve["average_precision"] - ap) <= 5e-5
    assert len(curve["recall"]) == len(curve["precision"]) <= CURVE_POINTS
    assert curve["recall"] == sorted(curve["recall"])
    assert (curve["recall"][0], curve["precision"][0]) == (0.0, 1.0)
    assert curve["recall"][-1] == 1.0
    on_curve = {(round(r, 4), round(p, 4)) for r, p in points}
    assert set(zip(curve["recall"], curve["precision"], strict=True)) <= on_curve


def test_pr_curve_keeps_a_drawable_number_of_points() -> None:
    rng = np.random.default_rng(1)
    positive = rng.random(1000) < 0.3
    curve = pr_curve(positive, np.where(positive, 0.3, 0.0) + rng.random(1000))
    assert len(curve["recall"]) == CURVE_POINTS
    assert curve["recall"][0] == 0.0 and curve["recall"][-1] == 1.0
    assert 0.5 < curve["average_precision"] < 1.0


def test_two_classes_with_one_absent_from_validation() -> None:
    truth = np.array([0, 0, 0])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    report = classification_report(truth, probs, ["a", "b"], ["x", "y", "z"])
    assert report["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                        "support": 0}
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [[2, 1], [0, 0]]
    assert top_k_accuracy(truth, probs) == {"top1": 2 / 3, "top2": 1.0}
    assert pr_curve(truth == 1, probs[:, 1])["average_precision"] == 0.0
    assert pr_curve(truth == 0, probs[:, 0])["average_precision"] == 1.0
