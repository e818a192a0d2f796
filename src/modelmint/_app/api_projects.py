"""REST: projects, uploads, items (labels) and the data check."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from ..errors import Conflict, InvalidInput, NotFound
from .context import BUSY, MAX_ID, AppContext, Ctx, Id, get_project, unique_slug
from .dataset import data_check, files_dir, item_counts, item_path, project_dir
from .db import Item, Job, Project, RetiredSlug
from .detection import DETECTION, images_dir, ingest_detection_file, ingest_detection_zip
from .uploads import UNLABELED, UploadResult, check_label, ingest_file, ingest_zip, receive

router = APIRouter(prefix="/api", tags=["projects and data"])


class NewProject(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    task: Literal["image", "sound", "text"] = "image"
    kind: Literal["classification", "detection"] = Field("classification", description=(
        "classification: one label per item; detection: labelled boxes on images (the task "
        "must be image)."))


class ProjectPatch(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class LabelPatch(BaseModel):
    label: str | None = Field(description="The new label; null makes the item unlabeled.")


def _summary(c: AppContext, project: Project) -> dict[str, Any]:
    with c.session() as session:
        counts = item_counts(session, project)
        jobs = session.scalar(select(func.count()).select_from(Job)
                              .where(Job.project_id == project.id))
    return {**project.to_json(), "counts": counts, "items": sum(counts.values()), "jobs": jobs}


@router.get("/projects")
def list_projects(c: Ctx) -> list[dict[str, Any]]:
    with c.session() as session:
        projects = list(session.scalars(select(Project).order_by(Project.id)))
    return [_summary(c, p) for p in projects]


@router.post("/projects", status_code=201)
def create_project(body: NewProject, c: Ctx) -> dict[str, Any]:
    if body.kind == DETECTION and body.task != "image":
        raise InvalidInput(f"task {body.task!r}: object detection works on images; "
                           "expected task 'image'")
    with c.session() as session:
        project = Project(name=body.name.strip(), task=body.task, kind=body.kind,
                          slug=unique_slug(session, c.settings, body.name))
        session.add(project)
        session.flush()
    if project.kind == DETECTION:
        images_dir(c.settings, project.id)
    else:
        files_dir(c.settings, project.id)
    return _summary(c, project)


@router.get("/projects/{project_id}")
def show_project(project_id: Id, c: Ctx) -> dict[str, Any]:
    with c.session() as session:
        project = get_project(session, project_id)
    return _summary(c, project)


@router.patch("/projects/{project_id}")
def rename_project(project_id: Id, body: ProjectPatch,
                   c: Ctx) -> dict[str, Any]:
    with c.session() as session:
        project = get_project(session, project_id)
        project.name = body.name.strip()
    return _summary(c, project)


@router.delete("/projects/{project_id}", status_code=204)
def delete_project(project_id: Id, c: Ctx) -> None:
    """Delete the project and all it owns: items and their files, jobs and their runs, every
    published version, and the deployment (unloaded from the model server first). Its id and
    its model name are never given to another project."""
    with c.session() as session:
        project = get_project(session, project_id)
        running = session.scalar(select(func.count()).select_from(Job).where(
            Job.project_id == project_id, Job.status == "running"))
        if running:
            raise Conflict(f"project {project.name!r} has a training job running; wait for it")
        job_ids = list(session.scalars(select(Job.id).where(Job.project_id == project_id)))
    with c.lock:  # no deployment may start (or be running) meanwhile
        if c.deployments.get(project_id, {}).get("state") in BUSY:
            raise Conflict(f"project {project.name!r} is being deployed or deleted; wait")
        c.deployments[project_id] = {"state": "deleting", "version": None, "error": None}
    try:
        c.serving.undeploy(project.slug)  # raises, keeping the project, if the server cannot
        with c.session() as session:
            session.delete(get_project(session, project_id))
            session.add(RetiredSlug(slug=project.slug))
    finally:
        with c.lock:
            c.deployments.pop(project_id, None)
    # In a bucket the versions stay (servers elsewhere may serve them, and no version is ever
    # rewritten); the app forgets its own copies. The slug is retired either way.
    for folder in (project_dir(c.settings, project_id), c.settings.repository.root / project.slug,
                   *(c.jobs.job_dir(job_id) for job_id in job_ids)):
        shutil.rmtree(folder, ignore_errors=True)


@router.post("/projects/{project_id}/uploads", status_code=201, openapi_extra={
    "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                          "format": "binary"}}}}})
async def upload(request: Request, project_id: Id, c: Ctx,
                 filename: str = Query(min_length=1, max_length=500,
                                       description="Name of the file: a .zip or one item."),
                 label: str | None = Query(None, description="Label for a single file.")
                 ) -> dict[str, Any]:
    """The request body is the file itself (streamed to disk; no multipart needed)."""
    with c.session() as session:
        get_project(session, project_id)
    incoming = project_dir(c.settings, project_id) / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    dest = incoming / f"{uuid.uuid4().hex}.part"
    declared = request.headers.get("content-length")
    await receive(request.stream(), dest, c.settings.upload_max_bytes, filename,
                  int(declared) if declared and declared.isascii() and declared.isdigit() else None)
    try:
        result = await run_in_threadpool(_ingest, c, project_id, dest, filename, label)
    finally:
        dest.unlink(missing_ok=True)
    return result.to_json()


def _ingest(c: AppContext, project_id: int, path: Path, filename: str,
            label: str | None) -> UploadResult:
    written: list[Path] = []
    try:
        with c.session() as session:
            project = get_project(session, project_id)
            zipped = filename.lower().endswith(".zip")
            if project.kind == DETECTION and zipped:
                result = ingest_detection_zip(session, project, path, filename, c.settings,
                                              written)
            elif project.kind == DETECTION:
                result = ingest_detection_file(session, project, path, filename, c.settings,
                                               written)
            elif zipped:
                result = ingest_zip(session, project, path, filename, c.settings,
                                    files_dir(c.settings, project_id), written)
            else:
                result = ingest_file(session, project, path, filename, label,
                                     files_dir(c.settings, project_id), written)
            project.data_revision += 1
            return result
    except BaseException:  # the rows are rolled back: remove the files this upload wrote
        for file in written:
            file.unlink(missing_ok=True)
        raise


@router.get("/projects/{project_id}/items")
def list_items(project_id: Id, c: Ctx, label: str | None = Query(
        None, description=f"Only this label ({UNLABELED!r}: the unlabeled items; in a "
                          "detection project 'labelled' or 'unlabeled')."),
               offset: int = Query(0, ge=0, le=MAX_ID), limit: int = Query(200, ge=1, le=1000)
               ) -> dict[str, Any]:
    with c.session() as session:
        project = get_project(session, project_id)
        query = select(Item).where(Item.project_id == project_id)
        if project.kind == DETECTION and label in (UNLABELED, "labelled"):
            boxes = Item.boxes
            query = query.where(boxes.is_(None) if label == UNLABELED else boxes.is_not(None))
        elif label == UNLABELED:
            query = query.where(Item.label.is_(None))
        elif label is not None:
            query = query.where(Item.label == label)
        total = session.scalar(select(func.count()).select_from(query.subquery()))
        items = session.scalars(query.order_by(Item.id).offset(offset).limit(limit)).all()
        counts = item_counts(session, project)
    return {"total": total, "items": [i.to_json() for i in items], "counts": counts}


@router.patch("/projects/{project_id}/items/{item_id}")
def relabel(project_id: Id, item_id: Id, body: LabelPatch,
            c: Ctx) -> dict[str, Any]:
    with c.session() as session:
        project = get_project(session, project_id)
        item = session.get(Item, item_id)
        if item is None or item.project_id != project_id:
            raise NotFound(f"project {project_id} has no item {item_id}")
        if project.kind == DETECTION:
            raise InvalidInput(f"project {project.name!r} detects objects: its images get "
                               "boxes (PUT .../images/{item}/boxes), not a label")
        new = None if body.label is None else check_label(body.label, f"item {item_id}")
        if new != item.label:
            item.label = new
            project.data_revision += 1
        return item.to_json()


@router.get("/projects/{project_id}/items/{item_id}/file")
def item_file(project_id: Id, item_id: Id, c: Ctx) -> FileResponse:
    with c.session() as session:
        project = get_project(session, project_id)
        item = session.get(Item, item_id)
        if item is None or item.project_id != project_id:
            raise NotFound(f"project {project_id} has no item {item_id}")
    path = item_path(c.settings, project, item)
    if not path.is_file():
        raise NotFound(f"item {item_id}: its file is missing from the data dir")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/projects/{project_id}/check")
def check(project_id: Id, c: Ctx) -> dict[str, Any]:
    """The data check (counts per split, unreadable files, duplicates, leakage, outliers)."""
    with c.session() as session:
        project = get_project(session, project_id)
        if not session.scalar(select(func.count()).select_from(Item)
                              .where(Item.project_id == project_id)):
            raise InvalidInput(f"project {project.name!r} has no data yet; upload some first")
        return data_check(session, c.settings, project)
