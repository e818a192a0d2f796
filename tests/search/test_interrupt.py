"""Ctrl-C that lands while a trial writes to its study: the trial is recorded as failed and the
database stays usable, instead of a locked SQLite file and a trial left RUNNING."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from modelmint._search import study_storage
from modelmint._search.interrupt import interrupt_outside_storage
from modelmint._search.options import TrainOptions
from modelmint._search.study_storage import STUDY_FILE, open_study

TASK = "image-classification"


@pytest.fixture(autouse=True)
def python_sigint() -> Iterator[None]:
    """Python's own SIGINT handler, as in ``mint train`` (a test before may have set another)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_sigint_during_a_commit_waits_for_it_to_finish(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A lock left behind by a cut commit would make later writes wait this long, then fail.
    monkeypatch.setattr(study_storage, "SQLITE_WAIT_SECONDS", 1)
    opts = TrainOptions(data=str(tmp_path), name="interrupted")
    study = open_study(opts, tmp_path, TASK)
    armed = [False]

    def sigint_mid_commit(conn: Connection) -> None:  # runs inside SQLAlchemy's commit
        if armed[0]:
            armed[0] = False
            signal.raise_signal(signal.SIGINT)

    def objective(trial: optuna.Trial) -> float:
        armed[0] = True
        trial.set_user_attr("stage", "finetune")
        for _ in range(200):  # training, where the interrupt belongs
            time.sleep(0.01)
        return 1.0

    event.listen(Engine, "commit", sigint_mid_commit)
    try:
        with pytest.raises(KeyboardInterrupt), interrupt_outside_storage():
            study.optimize(objective, n_trials=1)
    finally:
        event.remove(Engine, "commit", sigint_mid_commit)
    assert not armed[0], "the commit never ran"

    reopened = open_study(opts, tmp_path, TASK)  # another writer gets in at once
    [trial] = reopened.get_trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["stage"] == "finetune"
    with sqlite3.connect(tmp_path / STUDY_FILE, timeout=0) as db:  # no waiting for a lock
        db.execute("BEGIN IMMEDIATE")  # a write lock, or "database is locked"


def test_sigint_outside_a_database_call_interrupts_at_once(tmp_path: Path) -> None:
    def objective(trial: optuna.Trial) -> float:
        signal.raise_signal(signal.SIGINT)
        for _ in range(200):
            time.sleep(0.01)
        raise AssertionError("the interrupt waited")

    study = open_study(TrainOptions(data=str(tmp_path), name="at-once"), tmp_path, TASK)
    with pytest.raises(KeyboardInterrupt), interrupt_outside_storage():
        study.optimize(objective, n_trials=1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_set_before_still_decides(tmp_path: Path) -> None:
    calls: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    study = open_study(TrainOptions(data=str(tmp_path), name="chained"), tmp_path, TASK)

    def objective(trial: optuna.Trial) -> float:
        signal.raise_signal(signal.SIGINT)
        return 1.0

    with interrupt_outside_storage():
        study.optimize(objective, n_trials=1)
    assert calls == [signal.SIGINT]
    assert study.trials[0].state == TrialState.COMPLETE
