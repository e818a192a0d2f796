"""Training jobs: `mint train` subprocesses the app starts, watches and resumes.

A job is a child process in its own session (Ctrl-C at the app's terminal reaches the app, which
then stops its jobs with SIGINT so `mint train` checkpoints and records "interrupted"); if the
app dies, the kernel sends the trainer that SIGINT itself (:mod:`.children`). The browser only
reads state, so a refresh changes nothing. The app is the only writer of a job's row; when it
starts it marks jobs left "running" by a previous app as interrupted (their process is gone, or
is stopped now), and ``resume`` continues them with `mint train --resume`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import InvalidInput
from .children import ChildRecord, spawn, stop
from .dataset import build_snapshot, training_input
from .db import Job, Project, utcnow
from .settings import AppSettings

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

INTERRUPTED_RC = 130  # what `mint train` exits with after Ctrl-C (TrainingInterrupted)
STOP_GRACE_S = 20.0
PROCESS_FILE = "process.json"  # in the job's folder: its trainer (see .children)


class JobManager:
    def __init__(self, settings: AppSettings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- paths ---------------------------------------------------------------------------

    def job_dir(self, job_id: int) -> Path:
        return self.settings.jobs_dir / str(job_id)

    def run_dir(self, job_id: int) -> Path | None:
        """``runs/<model>-<n>`` inside the job: exactly one once `mint train` has started."""
        runs = sorted((self.job_dir(job_id) / "runs").glob("*-*"))
        return runs[0] if runs else None

    # --- lifecycle -----------------------------------------------------------------------

    def start_monitor(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._watch, name="mint-app-jobs", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """Jobs a previous app left "running" cannot be watched any more: interrupted."""
        with self.sessions.begin() as session:
            for job in session.scalars(select(Job).where(Job.status == "running")):
                record = ChildRecord.load(self.job_dir(job.id) / PROCESS_FILE)
                if record is not None and record.is_running():
                    stop(record.pid, signal.SIGINT)  # it checkpoints, so a resume never races it
                elif (record is None and job.pid is not None
                      and _is_our_trainer(job.pid, self.job_dir(job.id))):
                    stop(job.pid, signal.SIGINT)  # started before trainers were recorded
                job.pid, job.finished = None, utcnow()
                result = _last_json(self.job_dir(job.id) / "stdout.log")
                if result is not None and result.get("version") is not None:
                    # It finished (and published) after the app that watched it had died.
                    job.status, job.error = "succeeded", None
                    job.version = int(result["version"])
                    job.val_accuracy = _number(result.get("val_accuracy"))
                    job.map50 = _number(result.get("map50"))
                    continue
                job.status = "interrupted"
                job.error = "the app stopped while this job was running; resume it"

    def shutdown(self) -> None:
        """Stop every running job with SIGINT (it checkpoints), then mark it interrupted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            children = dict(self.children)
            self.children.clear()
        for proc in children.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for job_id, proc in children.items():
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._finish(job_id, proc.returncode, stopped=True)

    # --- commands --------------------------------------------------------------------------

    def start(self, session: Session, project: Project, budget: float,
              max_trials: int | None = None) -> Job:
        if budget < 10 or budget > 24 * 3600:
            raise InvalidInput(f"budget {budget:g}: expected 10 to 86400 seconds")
        job = Job(project_id=project.id, budget=budget, max_trials=max_trials,
                  status="running")
        session.add(job)
        session.flush()
        work = self.job_dir(job.id)
        shutil.rmtree(work, ignore_errors=True)
        (work / "runs").mkdir(parents=True)
        build_snapshot(session, self.settings, project, work / "data")
        job.pid = self._spawn(job.id, self._fresh_args(project, job))
        return job

    def _fresh_args(self, project: Project, job: Job) -> list[str]:
        work = self.job_dir(job.id)
        args = ["train", str(training_input(project, work / "data")), "--name", project.slug,
                "--repo", self.settings.repo_location, "--runs-dir", str(work / "runs"),
                "--budget", f"{job.budget:g}", "--json"]
        return args if job.max_trials is None else [*args, "--max-trials", str(job.max_trials)]

    def resume(self, session: Session, job: Job) -> Job:
        if job.status != "interrupted":
            raise InvalidInput(f"job {job.id} is {job.status}; only an interrupted job resumes")
        run_dir = self.run_dir(job.id)
        if run_dir is None or not (run_dir / "run.json").is_file():
            project = session.get(Project, job.project_id)
            assert project is not None
            args = self._fresh_args(project, job)  # it never got as far as a run directory
        else:
            args = ["train", "--resume", str(run_dir), "--budget", f"{job.budget:g}", "--json"]
        job.status, job.error, job.finished = "running", None, None
        job.attempts += 1
        job.pid = self._spawn(job.id, args)
        return job

    def _spawn(self, job_id: int, args: list[str]) -> int:
        work = self.job_dir(job_id)
        with (work / "stdout.log").open("ab") as out, (work / "stderr.log").open("ab") as err:
            proc, record = spawn([self.settings.python, "-m", "modelmint.cli", *args],
                                 signal.SIGINT, stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "100"})
        record.save(work / PROCESS_FILE)
        with self._lock:
            self.children[job_id] = proc
        return proc.pid

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.job_poll_s):
            with self._lock:
                done = {j: p for j, p in self.children.items() if p.poll() is not None}
            for job_id, proc in done.items():
                try:
                    finished = self._finish(job_id, proc.returncode, stopped=False)
                except Exception:  # a database hiccup must not kill the monitor: retry
                    logging.getLogger(__name__).exception("job %s: recording its end", job_id)
                    continue
                # False: the request that started it has not committed its row yet; next tick.
                if finished:
                    with self._lock:
                        self.children.pop(job_id, None)

    def _finish(self, job_id: int, rc: int, stopped: bool) -> bool:
        work = self.job_dir(job_id)
        result = _last_json(work / "stdout.log")
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None:
                return False
            job.pid, job.finished = None, utcnow()
            if rc == 0 and result is not None and result.get("version") is not None:
                job.status, job.error = "succeeded", None
                job.version = int(result["version"])
                # A classifier reports val_accuracy, a detector map50 (and map50_95).
                job.val_accuracy = _number(result.get("val_accuracy"))
                job.map50 = _number(result.get("map50"))
            elif stopped or rc == INTERRUPTED_RC or rc == -signal.SIGINT:
                job.status = "interrupted"
                job.error = "stopped before it finished; resume it to continue"
            else:
                job.status, job.error = "failed", _error_of(work / "stderr.log", rc)
        return True

    # --- progress --------------------------------------------------------------------------

    def progress(self, job_id: int) -> dict[str, Any]:
        run_dir = self.run_dir(job_id)
        records: list[dict[str, Any]] = []
        leaderboard: Any = None
        curves: list[dict[str, Any]] = []
        if run_dir is not None:
            # The fixed recipe logs epochs in the run dir; search trials may log in their own.
            for log in sorted(run_dir.rglob("log.jsonl")):
                for line in log.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        records.append(json.loads(line))
            board = run_dir / "leaderboard.json"  # the search writes it when it ends
            if board.is_file():
                with contextlib.suppress(json.JSONDecodeError, OSError):
                    leaderboard = json.loads(board.read_text())
            study = run_dir / "study.db"
            if study.is_file():
                live, curves = study_progress(study)
                leaderboard = leaderboard or ({"trials": live} if live else None)
        return {"epochs": [r for r in records if "epoch" in r], "leaderboard": leaderboard,
                "trial_curves": curves,
                "log_tail": _tail(self.job_dir(job_id) / "stderr.log", 15)}


def study_progress(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The search's trials and their intermediate validation scores, while it runs.

    Read through Optuna from its SQLite file opened read-only: nothing is created or written,
    and a file the search is still setting up (or holding locked) means no live rows this time.
    """
    # Imported here: the app starts without optuna and pays for it only when a search runs.
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        inode = path.stat().st_ino  # a file made anew at this path is another study
        trials = [trial for name in optuna.get_all_study_names(_watched_storage(path, inode))
                  for trial in _watched_study(path, inode, name).get_trials(deepcopy=False)]
    except (OSError, optuna.exceptions.OptunaError, SQLAlchemyError, KeyError):
        return [], []
    rows = [{"trial": t.number, "candidate": t.user_attrs.get("candidate", "?"),
             "state": t.state.name.lower(), "val_accuracy": t.values[0] if t.values else None,
             "seconds": t.user_attrs.get("seconds"),
             "stop_reason": t.user_attrs.get("stop_reason", "")}
            for t in trials]
    curves = [{"trial": t.number, "points": [[step, value] for step, value
                                             in sorted(t.intermediate_values.items())
                                             if math.isfinite(value)]}  # JSON has no NaN
              for t in trials if t.intermediate_values]
    return rows, curves


# Kept between polls: a study object re-reads only its unfinished trials, and an engine keeps
# its compiled queries (a fresh read of every trial costs 5-10 times more). Each entry holds
# one idle read-only connection; a few searches are watched at a time. ``inode`` is part of the
# key only, so that a file made anew at the same path is opened anew.
@functools.lru_cache(maxsize=8)
def _watched_storage(path: Path, inode: int) -> RDBStorage:
    from optuna.storages import RDBStorage

    # The schema check is skipped: `mint train` writes this file with this same optuna.
    return RDBStorage(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true",
                      engine_kwargs={"connect_args": {"timeout": 1}},
                      skip_compatibility_check=True, skip_table_creation=True)


@functools.lru_cache(maxsize=8)
def _watched_study(path: Path, inode: int, name: str) -> optuna.Study:
    import optuna

    return optuna.load_study(study_name=name, storage=_watched_storage(path, inode),
                             sampler=optuna.samplers.RandomSampler())


def _last_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return dict(json.loads(line))
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _tail(path: Path, lines: int) -> list[str]:
    if not path.is_file():
        return []
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 16384))
        text = fh.read().decode(errors="replace")
    return [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-lines:]


def _error_of(stderr: Path, rc: int) -> str:
    lines = _tail(stderr, 40)
    errors = [ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln]
    return errors[-1] if errors else f"mint train exited with code {rc}: " + " | ".join(lines[-3:])


def _is_our_trainer(pid: int, job_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "modelmint.cli" in cmdline and str(job_dir) in cmdline
