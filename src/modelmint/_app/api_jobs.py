"""REST: training jobs, their live progress, and the published versions with their reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from .._repository import METADATA_FILE, REPORT_FILE
from ..errors import Conflict, NotFound
from .context import Ctx, Id, Version, get_job, get_project
from .db import Job
from .edge import REPORT_POLICY

router = APIRouter(prefix="/api", tags=["training and evaluation"])


class NewJob(BaseModel):
    budget: float = Field(120.0, ge=10, le=86400,
                          description="Wall-clock ceiling of the training run, seconds.")
    max_trials: int | None = Field(None, ge=1, le=10000, description=(
        "Stop the model search after this many trials (default: only the budget)."))


@router.post("/projects/{project_id}/jobs", status_code=201)
def start_job(project_id: Id, body: NewJob, c: Ctx) -> dict[str, Any]:
    with c.session() as session:
        project = get_project(session, project_id)
        running = session.scalars(select(Job).where(Job.project_id == project_id,
                                                    Job.status == "running")).first()
        if running is not None:
            raise Conflict(f"job {running.id} of this project is still running")
        job = c.jobs.start(session, project, body.budget, body.max_trials)
        return job.to_json()


@router.get("/projects/{project_id}/jobs")
def list_jobs(project_id: Id, c: Ctx) -> list[dict[str, Any]]:
    with c.session() as session:
        get_project(session, project_id)
        jobs = session.scalars(select(Job).where(Job.project_id == project_id)
                               .order_by(Job.id.desc())).all()
        return [j.to_json() for j in jobs]


@router.get("/jobs/{job_id}")
def show_job(job_id: Id, c: Ctx) -> dict[str, Any]:
    """The job and its progress: one record per epoch (loss, accuracy), the search
    leaderboard when the run has one, and the last lines of the trainer's log."""
    with c.session() as session:
        job = get_job(session, job_id)
    return {**job.to_json(), **c.jobs.progress(job_id)}


@router.post("/jobs/{job_id}/resume")
def resume_job(job_id: Id, c: Ctx) -> dict[str, Any]:
    with c.session() as session:
        return c.jobs.resume(session, get_job(session, job_id)).to_json()


@router.get("/projects/{project_id}/versions")
def list_versions(project_id: Id, c: Ctx) -> list[dict[str, Any]]:
    with c.session() as session:
        project = get_project(session, project_id)
    out = []
    for ref in c.settings.repository.versions(project.slug):
        meta = ref.metadata()
        out.append({"version": ref.version, "created": meta.created, "labels": meta.labels,
                    "architecture": meta.architecture, "metrics": meta.metrics,
                    "deployed": ref.version == project.deployed_version})
    return out


@router.get("/projects/{project_id}/versions/{version}/report")
def version_report(project_id: Id, version: Version,
                   c: Ctx) -> dict[str, Any]:
    """``report.json`` of the version as training wrote it (evaluation, data, history), the
    item ids of the misclassified files (to show their images), and any profiler advice."""
    with c.session() as session:
        project = get_project(session, project_id)
    ref = c.settings.repository.version(project.slug, version)
    path = ref.path / REPORT_FILE
    if not path.is_file():
        raise NotFound(f"version {version} of {project.slug!r} has no {REPORT_FILE}")
    report: dict[str, Any] = json.loads(path.read_text())
    for error in report.get("evaluation", {}).get("misclassified", []):
        stem = str(error.get("file", "")).rsplit("/", 1)[-1].split(".", 1)[0]
        # Snapshots name files <id>; other names ("²".isdigit() too) are no item of ours.
        error["item_id"] = int(stem) if stem.isascii() and stem.isdigit() else None
    return {"version": version, "report": report, "profile": _profile_advice(ref.path),
            "has_html": (ref.path / "report.html").is_file()}


@router.get("/projects/{project_id}/versions/{version}/report.html")
def version_report_html(project_id: Id, version: Version, c: Ctx) -> FileResponse:
    """The search's self-contained HTML report (PR curves and all), when it wrote one."""
    with c.session() as session:
        project = get_project(session, project_id)
    path = c.settings.repository.version(project.slug, version).path
    if not (path / "report.html").is_file():
        raise NotFound(f"version {version} of {project.slug!r} has no report.html")
    return FileResponse(path / "report.html", media_type="text/html",
                        headers={"Content-Security-Policy": REPORT_POLICY})


def _profile_advice(version_dir: Path) -> list[dict[str, Any]]:
    """The profiler's advice for the run that made this version (``<run>/profile/report.json``,
    written by `mint train --profile`), when there is one."""
    places = [version_dir]
    provenance = json.loads((version_dir / METADATA_FILE).read_text()).get("provenance", {})
    for section in (provenance, provenance.get("training", {})):
        if isinstance(section, dict) and isinstance(section.get("run_dir"), str):
            places.append(Path(section["run_dir"]))
    for place in places:
        path = place / "profile" / "report.json"
        if path.is_file():
            try:
                analysis = json.loads(path.read_text()).get("analysis", {})
            except json.JSONDecodeError:
                continue
            return [a for a in analysis.get("advice", []) if isinstance(a, dict)]
    return []
