"""The only module that reaches past Optuna's user API. Written against optuna 5.1.

Optuna lets a process annotate only the trials it runs itself (``Trial.set_user_attr`` inside
the objective). Resuming a killed search must say why each trial it left RUNNING failed, and
those trials belong to the dead process: the annotation goes through the study's storage,
which Optuna keeps private (``Study._storage``) and whose methods it documents as internal.
``tests/search/test_optuna_private.py`` pins the version and exercises it.
"""

from __future__ import annotations

from typing import Any

import optuna

WRITTEN_FOR_OPTUNA = "5.1."


def set_running_trial_user_attr(study: optuna.Study, number: int, key: str, value: Any) -> None:
    """``Trial.set_user_attr`` for trial ``number`` of ``study``, from any process. The trial
    must still be RUNNING (or WAITING): a finished trial refuses changes."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
    storage.set_trial_user_attr(trial_id, key, value)
