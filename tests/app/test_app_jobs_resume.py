"""A training job and a crash of the app: the app is killed (SIGKILL) while `mint train` runs; the
trainer is stopped with it (it checkpoints on the SIGINT the kernel sends), the next app start
marks the job interrupted, and resuming it continues the same run directory to a published
version, with ``max_trials`` counted over both processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from live_server import free_port, sms_table, wait_for

ROWS = {"spam": 60, "ham": 140}  # a small slice of the sample: this test is about the job
# Three cheap TF-IDF baselines, then the MiniLM one (seconds of encoding): the app is killed
# while the run is still going; without the limit the resume would run more.
MAX_TRIALS = 5
BUDGET = 300  # a ceiling (data loading is slow on a busy machine); max_trials ends it first
FINISHED = ("complete", "pruned", "fail")


@contextmanager
def app_process(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "modelmint.cli", "app", "--data-dir",
                             str(data_dir), "--port", str(port),
                             "--serve-url", "http://127.0.0.1:9"])
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/projects", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "mint app exited"
            assert time.monotonic() < deadline, "mint app did not start"
            time.sleep(0.3)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def trials_counted(rows: list[dict[str, Any]]) -> int:
    """Trials that ended, a trial that was queued again after the crash counting once."""
    replaced = {r.get("retry_of") for r in rows}
    return sum(1 for r in rows if r["state"] in FINISHED and r["trial"] not in replaced)


def test_a_killed_app_stops_its_job_which_resumes_within_max_trials(tmp_path: Path,
                                                                   hymenoptera: Path) -> None:
    table = sms_table(hymenoptera.parent, ROWS)
    data_dir, port = tmp_path / "mint", free_port()
    base = f"http://127.0.0.1:{port}"
    with app_process(data_dir, port) as app:
        project = httpx.post(f"{base}/api/projects", json={"name": "small",
                                                            "task": "text"}).json()["id"]
        up = httpx.post(f"{base}/api/projects/{project}/uploads",
                        params={"filename": "small.tsv"}, content=table, timeout=60)
        assert up.json()["added"] == sum(ROWS.values()), up.text
        job = httpx.post(f"{base}/api/projects/{project}/jobs",
                         json={"budget": BUDGET, "max_trials": MAX_TRIALS}).json()

        def one_trial_ended() -> bool:
            state = httpx.get(f"{base}/api/jobs/{job['id']}").json()
            assert state["status"] == "running", state
            board = state["leaderboard"] or {"trials": []}
            return trials_counted(board["trials"]) >= 1

        wait_for("the first trial to end", one_trial_ended, 240)
        pid = int(job["pid"])
        app.kill()  # a crash: no shutdown
        app.wait(30)
        wait_for("the trainer to stop with the app", lambda: not alive(pid), 60)
    with app_process(data_dir, port):
        trainer = httpx.get(f"{base}/api/jobs/{job['id']}").json()
        assert trainer["status"] == "interrupted", trainer
        assert "resume" in trainer["error"]
        resumed = httpx.post(f"{base}/api/jobs/{job['id']}/resume").json()
        assert resumed["status"] == "running" and resumed["attempts"] == 2
        again = httpx.post(f"{base}/api/jobs/{job['id']}/resume")
        assert again.status_code == 400 and "running" in again.json()["error"]
        done = wait_for("the resumed job", lambda: (lambda j: j if j["status"] != "running"
                                                      else None)(
            httpx.get(f"{base}/api/jobs/{job['id']}").json()), BUDGET + 120)
        assert done["status"] == "succeeded", done
        assert done["version"] == 1
        run_dirs = list((data_dir / "jobs" / str(job["id"]) / "runs").glob("*-*"))
        assert len(run_dirs) == 1  # continued, not restarted
        trials = done["leaderboard"]["trials"]
        assert trials_counted(trials) == MAX_TRIALS, trials
        assert len({r["worker"] for r in trials if r["worker"]}) == 2  # both processes ran some


def test_a_job_that_published_after_its_app_died_is_recorded_as_succeeded(
        tmp_path: Path) -> None:
    from modelmint._app.db import Job, Project, make_engine, migrate, session_factory
    from modelmint._app.jobs import JobManager
    from modelmint._app.settings import AppSettings

    settings = AppSettings(data_dir=tmp_path / "mint")
    settings.make_dirs()
    engine = make_engine(settings.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        session.add(Project(id=1, name="p", slug="p", task="text"))
        session.flush()  # the project row first: the jobs refer to it
        session.add(Job(id=1, project_id=1, status="running", budget=60.0, pid=None))
        session.add(Job(id=2, project_id=1, status="running", budget=60.0, pid=None))
    manager = JobManager(settings, sessions)
    # Job 1's trainer finished and printed its result; job 2's was cut off mid-run.
    manager.job_dir(1).mkdir(parents=True)
    (manager.job_dir(1) / "stdout.log").write_text(
        json.dumps({"version": 4, "val_accuracy": 0.9}) + "\n")
    manager.job_dir(2).mkdir(parents=True)
    manager.recover()
    with sessions.begin() as session:
        done, cut = session.get(Job, 1), session.get(Job, 2)
        assert done is not None and cut is not None
        assert (done.status, done.version, done.val_accuracy) == ("succeeded", 4, 0.9)
        assert cut.status == "interrupted" and "resume" in str(cut.error)
