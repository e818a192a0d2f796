"""REST: deploy / undeploy a version, its serving state, "try it", snippets, the offline SDK."""

from __future__ import annotations

import json
import threading
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from .._serve.v2client import bytes_request, request_json
from .._settings import DEFAULT_MAX_REQUEST_BYTES
from .._tensor_names import (
    AUDIO_INPUT,
    BOXES,
    CLASSES,
    COUNT,
    IMAGE_INPUT,
    PROBABILITIES,
    SCORES,
    TEXT_INPUT,
)
from ..errors import Conflict, InvalidInput, MintError, PayloadTooLarge
from .context import BUSY, MAX_ID, AppContext, Ctx, Id, get_project
from .db import Project
from .detection import DETECTION
from .sdk import build_sdk

router = APIRouter(prefix="/api", tags=["deployment"])
TRY_MAX_BYTES = DEFAULT_MAX_REQUEST_BYTES  # what a default `mint serve` accepts


class DeployRequest(BaseModel):
    version: int = Field(ge=1, le=MAX_ID)


# Per task: the model's encoded input and an example file (none: a text).
_INPUTS = {"image": (IMAGE_INPUT, "my.jpg"), "sound": (AUDIO_INPUT, "my.wav"),
           "text": (TEXT_INPUT, "")}
_TOP_K = 3


def _snippets(url: str, slug: str, task: str, kind: str = "classification"
              ) -> dict[str, str]:
    """Ready-to-paste clients: curl with the V2 JSON body, and tritonclient."""
    if kind == DETECTION:
        return _detection_snippets(url, slug)
    name, example = _INPUTS[task]
    host = url.split("://", 1)[-1]
    infer = f"curl -s {url}/v2/models/{slug}/infer -H 'Content-Type: application/json'"
    if example:
        # The body as the client module writes it, with the file's base64 spliced into its one
        # data element by the shell.
        empty = bytes_request(name, [b""], classification=_TOP_K)
        head, tail = json.dumps(request_json(empty)).split('[""]')
        curl = (f"(printf '%s' '{head}[\"'; base64 -w0 {example}; printf '%s' '\"]{tail}') "
                f"> request.json\n{infer} -d @request.json")
        value = f'open("{example}", "rb").read()'
    else:
        text = bytes_request(name, [b"some text"], classification=_TOP_K)
        curl = f"{infer} -d '{json.dumps(request_json(text))}'"
        value = '"some text".encode()'
    python = f"""import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient("{host}")
data = httpclient.InferInput("{name}", [1], "BYTES")
data.set_data_from_numpy(np.array([{value}], dtype=object))
top = httpclient.InferRequestedOutput("{PROBABILITIES}", class_count={_TOP_K})
result = client.infer("{slug}", [data], outputs=[top])
print(result.as_numpy("{PROBABILITIES}"))  # b"score:index:label" strings"""
    return {"curl": curl, "python": python}


def _detection_snippets(url: str, slug: str) -> dict[str, str]:
    host = url.split("://", 1)[-1]
    empty = bytes_request(IMAGE_INPUT, [b""])
    head, tail = json.dumps(request_json(empty)).split('[""]')
    curl = (f"(printf '%s' '{head}[\"'; base64 -w0 my.jpg; printf '%s' '\"]{tail}') "
            f"> request.json\ncurl -s {url}/v2/models/{slug}/infer "
            "-H 'Content-Type: application/json' -d @request.json")
    python = f"""import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient("{host}")
data = httpclient.InferInput("{IMAGE_INPUT}", [1], "BYTES")
data.set_data_from_numpy(np.array([open("my.jpg", "rb").read()], dtype=object))
result = client.infer("{slug}", [data])
count = int(result.as_numpy("{COUNT}")[0])
boxes = result.as_numpy("{BOXES}")[0][:count]  # x1, y1, x2, y2 in the image's pixels
scores = result.as_numpy("{SCORES}")[0][:count]
classes = result.as_numpy("{CLASSES}")[0][:count]  # index into the model's labels"""
    return {"curl": curl, "python": python}


@router.post("/projects/{project_id}/deploy", status_code=202)
def deploy(project_id: Id, body: DeployRequest, c: Ctx) -> dict[str, Any]:
    """Publish the version to the model server and load it; poll ``deployment`` for progress."""
    with c.session() as session:
        project = get_project(session, project_id)
    c.settings.repository.version(project.slug, body.version)  # 404 early
    with c.lock:
        if c.deployments.get(project_id, {}).get("state") in BUSY:
            raise Conflict("a deployment of this project is already in progress, or the "
                           "project is being deleted")
        c.deployments[project_id] = {"state": "deploying", "version": body.version,
                                     "error": None}

    previous = project.deployed_version

    def work() -> None:
        try:
            c.serving.deploy(project.slug, body.version, previous)
            with c.session() as session:
                get_project(session, project_id).deployed_version = body.version
            state: dict[str, Any] = {"state": "deployed", "version": body.version, "error": None}
        except MintError as exc:
            state = {"state": "failed", "version": body.version, "error": exc.message}
        except Exception as exc:  # shown to the user, not lost in a thread
            state = {"state": "failed", "version": body.version, "error": repr(exc)}
        with c.lock:
            c.deployments[project_id] = state

    threading.Thread(target=work, name=f"deploy-{project_id}", daemon=True).start()
    return deployment(project_id, c)


@router.delete("/projects/{project_id}/deploy")
def undeploy(project_id: Id, c: Ctx) -> dict[str, Any]:
    with c.session() as session:
        project = get_project(session, project_id)
        if c.deployments.get(project_id, {}).get("state") in BUSY:
            raise Conflict("a deployment of this project is in progress; wait for it")
        c.serving.undeploy(project.slug)
        project.deployed_version = None
    with c.lock:
        c.deployments.pop(project_id, None)
    return deployment(project_id, c)


@router.get("/projects/{project_id}/deployment")
def deployment(project_id: Id, c: Ctx) -> dict[str, Any]:
    """The deployed version, the deployment in progress (if any) and the server's per-version
    states (LOADING / WARMING / READY / UNAVAILABLE), plus ready-to-paste client snippets."""
    with c.session() as session:
        project = get_project(session, project_id)
    with c.lock:
        current = dict(c.deployments.get(project_id, {}))
    server = c.serving.status(project.slug) if project.deployed_version or current else None
    return {"deployed_version": project.deployed_version, "model": project.slug,
            "server_url": c.serving.url, "task": project.task, "kind": project.kind,
            "progress": current or None, "server": server,
            "snippets": _snippets(c.serving.url, project.slug, project.task, project.kind)}


@router.post("/projects/{project_id}/predict")
async def try_it(request: Request, project_id: Id, c: Ctx,
                 top_k: int = Query(5, ge=1, le=100),
                 score_threshold: float | None = Query(None, ge=0, le=1, description=(
                     "A detector: only boxes scoring at least this (default: the version's "
                     "own threshold)."))) -> dict[str, Any]:
    """Body: an image or wav file, or UTF-8 text. Answers the deployed model's top-k; a
    detector's boxes (``boxes``: label, score, x1, y1, x2, y2 in the image's pixels)."""
    with c.session() as session:
        project = get_project(session, project_id)
    if project.deployed_version is None:
        raise InvalidInput(f"project {project.name!r} has no deployed version; deploy one first")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > TRY_MAX_BYTES:
            raise PayloadTooLarge(f"try it: more than {TRY_MAX_BYTES} bytes")
    if not body:
        raise InvalidInput("try it: the request body is empty; send an image, a wav or text")
    if project.kind == DETECTION:
        boxes = await run_in_threadpool(_detect, c, project, body, score_threshold)
        return {"version": project.deployed_version, "boxes": boxes}
    top = await run_in_threadpool(c.serving.predict, project.slug, body, top_k)
    return {"version": project.deployed_version, "top": top}


def _detect(c: AppContext, project: Project, body: bytes,
            score_threshold: float | None) -> list[dict[str, Any]]:
    assert project.deployed_version is not None
    ref = c.settings.repository.version(project.slug, project.deployed_version)
    return c.serving.detect(project.slug, body, list(ref.metadata().labels), score_threshold)


@router.get("/projects/{project_id}/sdk")
def download_sdk(project_id: Id, c: Ctx) -> Response:
    with c.session() as session:
        project = get_project(session, project_id)
    if project.deployed_version is None:
        raise InvalidInput(f"project {project.name!r} has no deployed version; deploy one first")
    ref = c.settings.repository.version(project.slug, project.deployed_version)
    name, blob = build_sdk(ref.path)
    return Response(blob, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
