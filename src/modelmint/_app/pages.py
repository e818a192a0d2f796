"""Server-rendered pages (Jinja2). They carry no data of their own: ``static/app.js`` fills them
from the same REST API scripts use."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ..errors import NotFound
from .context import Ctx, Id, get_project

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
TABS = ("data", "label", "train", "evaluate", "deploy")


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    return templates.TemplateResponse(request, "projects.html", {"page": "projects"})


@router.get("/login", response_class=HTMLResponse)
def login(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"page": "login"})


@router.get("/projects/{project_id}")
def project_home(project_id: Id) -> Response:
    return RedirectResponse(f"/projects/{project_id}/data", 303)


@router.get("/projects/{project_id}/{tab}", response_class=HTMLResponse)
def project_tab(request: Request, project_id: Id, tab: str,
                c: Ctx) -> Response:
    if tab not in TABS:
        raise NotFound(f"no page {tab!r}; pages are {', '.join(TABS)}")
    with c.session() as session:
        project = get_project(session, project_id)
    # A detection project labels boxes on one image at a time: a page of its own.
    page = "boxes" if tab == "label" and project.kind == "detection" else tab
    return templates.TemplateResponse(request, f"{page}.html", {
        "page": tab, "project": project.to_json(), "tabs": TABS})
