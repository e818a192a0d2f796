"""What every request handler needs: settings, the database, the job manager, the server."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi import Path as PathParameter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import NotFound
from .db import Job, Project, RetiredSlug
from .jobs import JobManager
from .serving import Serving
from .settings import AppSettings

MAX_ID = 2**31 - 1  # ids are INTEGER columns: 32 bits in PostgreSQL
BUSY = ("deploying", "deleting")  # deployment states in which no other may start


@dataclass
class AppContext:
    settings: AppSettings
    sessions: sessionmaker[Session]
    jobs: JobManager
    serving: Serving
    token: str | None
    # project id -> {"state": deploying|deployed|failed|deleting, "version", "error"}: the
    # in-flight part of a deployment (the deployed version itself is in the database).
    deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session


def ctx(request: Request) -> AppContext:
    context: AppContext = request.app.state.ctx
    return context


def get_project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    return project


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def unique_slug(session: Session, settings: AppSettings, name: str) -> str:
    """A model name for the repository and server: letters, digits, '-', never given before.
    A slug is taken while a project has it, once a deleted project had it, and while a folder
    of that name is in the model repository or the served one (whoever left it there)."""
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "project"
    taken = set(session.scalars(select(Project.slug).where(Project.slug.like(f"{base}%"))))
    taken.update(session.scalars(select(RetiredSlug.slug)
                                 .where(RetiredSlug.slug.like(f"{base}%"))))
    slug, n = base, 2
    while (slug in taken or settings.repository_has(slug)
           or (settings.serving_dir / slug).exists()):
        slug, n = f"{base}-{n}", n + 1
    return slug


Ctx = Annotated[AppContext, Depends(ctx)]
# Path parameters: a number out of the columns' range is a 400, not a database error.
Id = Annotated[int, PathParameter(ge=1, le=MAX_ID)]
Version = Annotated[int, PathParameter(ge=1, le=MAX_ID)]
