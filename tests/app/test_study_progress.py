"""A running search's live trials, read from its study file without writing to it."""

from __future__ import annotations

from pathlib import Path

import optuna

from modelmint._app.jobs import study_progress


def test_trials_and_their_curves_come_from_the_study_file(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="digits:audio",
                                direction="maximize")
    done = study.ask()
    done.set_user_attr("candidate", "logmel-stats+lr")
    done.set_user_attr("seconds", 4.5)
    done.set_user_attr("stop_reason", "completed")
    for step, score in enumerate([0.5, float("nan"), 0.75]):
        done.report(score, step)
    study.tell(done, 0.75)
    running = study.ask()
    running.set_user_attr("candidate", "cnn")
    running.report(0.25, 0)
    before = path.read_bytes()

    rows, curves = study_progress(path)

    assert rows == [
        {"trial": 0, "candidate": "logmel-stats+lr", "state": "complete", "val_accuracy": 0.75,
         "seconds": 4.5, "stop_reason": "completed"},
        {"trial": 1, "candidate": "cnn", "state": "running", "val_accuracy": None,
         "seconds": None, "stop_reason": ""}]
    assert curves == [{"trial": 0, "points": [[0, 0.5], [2, 0.75]]},
                      {"trial": 1, "points": [[0, 0.25]]}]
    assert path.read_bytes() == before

    running.report(0.5, 1)  # the search goes on between two polls
    study.tell(running, 0.5)
    rows, curves = study_progress(path)
    assert rows[1]["state"] == "complete" and rows[1]["val_accuracy"] == 0.5
    assert curves[1] == {"trial": 1, "points": [[0, 0.25], [1, 0.5]]}


def test_a_file_without_a_study_gives_no_rows_and_stays_untouched(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()  # the search has created the file, not yet its tables
    assert study_progress(empty) == ([], [])
    assert empty.stat().st_size == 0
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    assert study_progress(garbage) == ([], [])
    assert study_progress(tmp_path / "missing.db") == ([], [])
    assert not (tmp_path / "missing.db").exists()
