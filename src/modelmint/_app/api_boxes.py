"""REST for detection projects: the class list, each image's boxes, and the labels exported as
COCO, VOC or YOLO."""

from __future__ import annotations

import math
import uuid
from typing import Any, Literal, Self

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from ..errors import InvalidInput, NotFound
from .context import AppContext, Ctx, Id, get_project
from .dataset import project_dir
from .db import Item, Project
from .detection import (
    DETECTION,
    add_classes,
    export_zip,
    image_size,
    read_boxes,
    read_classes,
    write_boxes,
)
from .uploads import check_label

router = APIRouter(prefix="/api", tags=["detection labels"])
MAX_BOXES = 1000  # per image
MAX_COORDINATE = 1_000_000.0


class NewClass(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="The class to add.")


class BoxIn(BaseModel):
    """One box in pixels of the upright image: 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height."""

    label: str = Field(min_length=1, max_length=100, description="One of the project's classes.")
    x1: float = Field(ge=0, le=MAX_COORDINATE)
    y1: float = Field(ge=0, le=MAX_COORDINATE)
    x2: float = Field(ge=0, le=MAX_COORDINATE)
    y2: float = Field(ge=0, le=MAX_COORDINATE)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.x2 > self.x1:
            raise ValueError(f"x2 ({self.x2:g}) must be greater than x1 ({self.x1:g})")
        if not self.y2 > self.y1:
            raise ValueError(f"y2 ({self.y2:g}) must be greater than y1 ({self.y1:g})")
        return self


class BoxesIn(BaseModel):
    boxes: list[BoxIn] = Field(max_length=MAX_BOXES, description=(
        "Every box of the image (an empty list: labelled, nothing in it)."))


def _detection_project(session: Session, project_id: int) -> Project:
    project = get_project(session, project_id)
    if project.kind != DETECTION:
        raise InvalidInput(f"project {project.name!r} classifies; classes of boxes, boxes and "
                           "their export belong to object-detection projects")
    return project


def _image(session: Session, project_id: int, item_id: int) -> tuple[Project, Item]:
    project = _detection_project(session, project_id)
    item = session.get(Item, item_id)
    if item is None or item.project_id != project_id:
        raise NotFound(f"project {project_id} has no image {item_id}")
    return project, item


@router.get("/projects/{project_id}/classes")
def list_classes(project_id: Id, c: Ctx) -> list[str]:
    """The classes in order: the labelling page's number keys 1-9 pick the first nine."""
    with c.session() as session:
        _detection_project(session, project_id)
    return read_classes(c.settings, project_id)


@router.post("/projects/{project_id}/classes", status_code=201)
def new_class(project_id: Id, body: NewClass, c: Ctx) -> list[str]:
    with c.session() as session:
        _detection_project(session, project_id)
        name = check_label(body.name, "class name")
    return add_classes(c.settings, project_id, [name])


def _boxes_json(c: AppContext, project: Project, item: Item) -> dict[str, Any]:
    width, height = image_size(c.settings, item)
    boxes = read_boxes(c.settings, item)
    return {"image": item.id, "original": item.original, "width": width, "height": height,
            "labelled": boxes is not None, "classes": read_classes(c.settings, project.id),
            "boxes": [{"label": b.label, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2}
                      for b in boxes or []],
            "url": f"/api/projects/{project.id}/items/{item.id}/file"}


@router.get("/projects/{project_id}/images/{item_id}/boxes")
def get_boxes(project_id: Id, item_id: Id, c: Ctx) -> dict[str, Any]:
    """The image's size and boxes (pixels of the upright image); ``labelled`` false: nobody
    has labelled it yet."""
    with c.session() as session:
        project, item = _image(session, project_id, item_id)
    return _boxes_json(c, project, item)


@router.put("/projects/{project_id}/images/{item_id}/boxes")
def put_boxes(project_id: Id, item_id: Id, body: BoxesIn, c: Ctx) -> dict[str, Any]:
    """Replace the image's boxes (it counts as labelled from now on, even with none)."""
    from .._data.annotations import Box

    with c.session() as session:
        project, item = _image(session, project_id, item_id)
        width, height = image_size(c.settings, item)
        classes = read_classes(c.settings, project_id)
        for n, box in enumerate(body.boxes):
            if box.label not in classes:
                raise InvalidInput(f"boxes.{n}.label: unknown class {box.label!r}; the "
                                   f"project's classes are {classes} (add it first)")
            for name, value, limit, side in (("x2", box.x2, width, "width"),
                                             ("y2", box.y2, height, "height")):
                if value > limit or not math.isfinite(value):
                    raise InvalidInput(f"boxes.{n}.{name}: {value:g} is outside the image "
                                       f"({side} {limit} pixels)")
        write_boxes(c.settings, item, width, height,
                    [Box(b.label, b.x1, b.y1, b.x2, b.y2) for b in body.boxes])
        item.boxes = len(body.boxes)
        project.data_revision += 1
    return _boxes_json(c, project, item)


@router.get("/projects/{project_id}/export", response_class=FileResponse, responses={
    200: {"content": {"application/zip": {}}, "description": "The labels and images, zipped."}})
async def export(project_id: Id, c: Ctx, format: Literal["coco", "voc", "yolo"] = Query(
        description="The annotation format of the download.")) -> FileResponse:
    """The labelled images and their boxes as a zip in COCO, Pascal VOC or YOLO layout."""
    with c.session() as session:
        project = _detection_project(session, project_id)
    folder = project_dir(c.settings, project_id) / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{uuid.uuid4().hex}.zip"

    def build() -> None:
        with c.session() as session:
            export_zip(session, c.settings, _detection_project(session, project_id), format,
                       dest)

    try:
        await run_in_threadpool(build)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return FileResponse(dest, media_type="application/zip",
                        filename=f"{project.slug}-{format}.zip",
                        background=BackgroundTask(dest.unlink, missing_ok=True))
