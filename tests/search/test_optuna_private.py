"""Optuna's storage, reached in one module: the use still works on the installed optuna."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from modelmint._search._optuna_private import WRITTEN_FOR_OPTUNA, set_running_trial_user_attr


def test_optuna_is_the_version_the_storage_access_was_checked_against() -> None:
    assert optuna.__version__.startswith(WRITTEN_FOR_OPTUNA), (
        f"optuna {optuna.__version__} is installed; modelmint/_search/_optuna_private.py uses "
        f"Study._storage and storage methods checked on optuna {WRITTEN_FOR_OPTUNA}x. Re-check "
        "them against the new optuna (this file exercises them), then update "
        "WRITTEN_FOR_OPTUNA.")


def test_another_process_can_annotate_a_running_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    owner = optuna.create_study(storage=url, study_name="s")
    owner.enqueue_trial({"x": 1.0})
    owner.tell(owner.ask(), 1.0)
    running = owner.ask()
    resumed = optuna.load_study(storage=url, study_name="s")  # as a later process opens it
    set_running_trial_user_attr(resumed, running.number, "stop_reason", "killed")
    assert owner.get_trials()[running.number].user_attrs == {"stop_reason": "killed"}
    assert owner.get_trials()[0].user_attrs == {}
    resumed.tell(running.number, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_running_trial_user_attr(resumed, running.number, "stop_reason", "again")
