"""The evaluation report: top-k, PR curves, the "other" class's effect, self-contained HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelmint._data.dataset import TaskData
from modelmint._search.report import build_report, render_html
from modelmint._tasks.classification import reject_effect
from modelmint._tasks.registry import get_task
from modelmint._train.evaluate import pr_curve


def test_pr_curve_perfect_and_random() -> None:
    perfect = pr_curve(np.array([True, True, False, False]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert perfect["average_precision"] == 1.0 and perfect["recall"][-1] == 1.0
    worst = pr_curve(np.array([False, False, True, True]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert worst["average_precision"] < 0.6


def test_reject_effect_counts_out_of_domain_items() -> None:
    labels = ["a", "b", "other"]
    truth = np.array([0, 1, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1]])
    effect = reject_effect(truth, probs, labels, "other")
    assert effect["out_of_domain_val_items"] == 2 and effect["out_of_domain_caught"] == 1
    # With "other": a, b, a(wrong) → 2/3; forced onto known classes: a, b, a, a → 2/4.
    assert effect["known_precision_with_reject"] == round(2 / 3, 4)
    assert effect["known_precision_without_reject"] == 0.5


def test_report_json_and_self_contained_html(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = ["c0", "c1", "c2", "other"]
    val = [(f"c{i % 4}/{i}.jpg", i % 4) for i in range(20)]
    data = TaskData("image-classification", tmp_path, labels, [], val, "held-out speakers",
                    reject_label="other")
    probs = rng.dirichlet(np.ones(4), size=20)
    board = {"notes": ["fine-tuning beat the frozen baseline"], "budget": 60, "trials": [{}]}
    task = get_task("image-classification")
    report = build_report(task, data, task.evaluate(data, probs),
                          {"trial": 3, "candidate": "x/finetune"}, board)
    ev = report["evaluation"]
    assert set(ev["top_k"]) == {"top1", "top2", "top3", "top4"} and ev["top_k"]["top4"] == 1.0
    assert ev["top_k"]["top1"] == ev["accuracy"]
    assert set(ev["pr_curves"]) == set(labels)
    assert report["indicative_only"] and "indicative only" in report["warnings"][0]
    assert report["split"] == "held-out speakers" and "reject" in ev
    page = render_html(report, "demo <report>", task)
    assert page.startswith("<!doctype html>") and "<svg" in page and "&lt;report&gt;" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script" not in page
    assert "indicative only" in page and "other" in page
