"""Where a search's Optuna study lives: SQLite in the run directory, or a shared database by URL.

A heartbeat marks the trials of a dead worker as failed and a retry callback queues them again,
so no trial stays RUNNING; two workers opening a new database at once race to create its
schema, and the loser retries.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..errors import DataError
from ._optuna_private import set_running_trial_user_attr

if TYPE_CHECKING:
    from .options import TrainOptions

STUDY_FILE = "study.db"
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 15  # a RUNNING trial without a heartbeat for this long is failed and retried
# SQLite lets one writer in at a time and makes the others wait this long (its default, 5 s,
# is short for a loaded machine: the heartbeat thread writes beside the trial's own records).
SQLITE_WAIT_SECONDS = 30


def _retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Queue a stale trial once more. Optuna 4.9 renamed RetryFailedTrialCallback to this class,
    which it still marks experimental although it dates from v2.8: the warning says nothing to a
    user, so it is silenced here and only here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=1)


def storage_url(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; we ship psycopg 3."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_study(opts: TrainOptions, run_dir: Path, task: str) -> optuna.Study:
    url = storage_url(opts.storage or f"sqlite:///{(run_dir / STUDY_FILE).resolve()}")
    engine = {"connect_args": {"timeout": SQLITE_WAIT_SECONDS}} if url.startswith("sqlite") \
        else None
    for attempt in range(3):
        try:
            retry = _retry_callback()
            storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                 grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=retry)
            break
        except Exception as exc:  # SQLAlchemy raises many kinds; all mean "cannot use it"
            # Two workers starting together race to create the schema: the loser retries.
            if attempt == 2:
                raise DataError(f"--storage {url}: cannot open the study database "
                                f"({exc})") from exc
            time.sleep(1.0 + attempt)
    # Workers sample independently (seed=None): a shared seed would make them suggest the same
    # parameters at the same time.
    seed = None if opts.worker or opts.storage else opts.seed
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    for attempt in range(3):
        try:
            return optuna.create_study(storage=storage, study_name=f"{opts.name}:{task}",
                                       direction="maximize", sampler=sampler, pruner=pruner,
                                       load_if_exists=True)
        except Exception:  # the same race, on the study row
            if attempt == 2:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def retry_orphans(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials left by a killed process and queue each once more.

    Only for a study this process owns (SQLite in its run directory): nobody else can be running
    them. A shared study relies on the heartbeat instead.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # A finished trial takes no attribute: say why it failed before failing it.
        set_running_trial_user_attr(study, trial.number, "stop_reason",
                                    "killed (no heartbeat): queued again on resume")
        _retry_callback()(study, study.tell(trial.number, state=TrialState.FAIL))
        failed.append(trial.number)
    return failed
