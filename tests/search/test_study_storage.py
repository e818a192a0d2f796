"""Resuming a study whose process was killed: its RUNNING trials fail with a reason and are
queued again once, with the same parameters."""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from modelmint._search.options import TrainOptions
from modelmint._search.study_storage import open_study, retry_orphans

TASK = "image-classification"


def test_orphaned_running_trials_fail_and_are_queued_again(tmp_path: Path) -> None:
    opts = TrainOptions(data=str(tmp_path), name="orphans")
    killed = open_study(opts, tmp_path, TASK)
    done = killed.ask()
    done.suggest_float("lr", 1e-4, 1e-1, log=True)
    killed.tell(done, 0.5)
    running = killed.ask()
    lr = running.suggest_float("lr", 1e-4, 1e-1, log=True)
    running.set_user_attr("candidate", "mobilenet_v2/finetune")

    resumed = open_study(opts, tmp_path, TASK)  # what the next process opens
    assert retry_orphans(resumed) == [running.number]
    trials = resumed.get_trials()
    orphan = trials[running.number]
    assert orphan.state == TrialState.FAIL
    assert orphan.user_attrs["stop_reason"].startswith("killed")
    assert trials[done.number].state == TrialState.COMPLETE
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].params == {"lr": lr}
    assert queued[0].system_attrs["failed_trial"] == running.number
    assert queued[0].user_attrs["candidate"] == "mobilenet_v2/finetune"
    assert retry_orphans(resumed) == []  # nothing is left RUNNING
