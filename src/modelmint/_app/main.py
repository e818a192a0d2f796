"""``mint app``: assemble the FastAPI app (REST API + pages), own its subprocesses, run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from rich.console import Console
from starlette.exceptions import HTTPException

from .._serve.auth import token_matches
from ..errors import MintError, Unauthorized
from . import api_boxes, api_deploy, api_jobs, api_projects, pages
from .auth import COOKIE, load_or_create_token, make_guard
from .context import AppContext
from .db import make_engine, migrate, session_factory
from .edge import Edge, allowed_hosts
from .jobs import JobManager
from .serving import Serving
from .settings import AppSettings

STATIC = Path(__file__).parent / "static"
LOGIN_BODY = {"requestBody": {"required": True, "content": {
    "application/x-www-form-urlencoded": {"schema": {
        "type": "object", "required": ["token"],
        "properties": {"token": {"type": "string", "description": "The access token."}}}}}}}


def create_app(settings: AppSettings, console: Console | None = None) -> FastAPI:
    """The whole app. Its lifespan migrates the database, starts `mint serve` (unless
    ``serve_url``) and the job monitor; shutting down stops running jobs (they become
    "interrupted", resumable) and the server."""
    console = console or Console(stderr=True)
    settings.make_dirs()
    engine = make_engine(settings.database_url)
    migrate(engine)
    token = None
    if settings.requires_token:
        token, created = load_or_create_token(settings)
        if created:  # printed once; afterwards it is only in the 0600 file
            console.print(f"[bold]access token[/] (also in {settings.token_file}): {token}")
    sessions = session_factory(engine)
    context = AppContext(settings=settings, sessions=sessions,
                         jobs=JobManager(settings, sessions), serving=Serving(settings),
                         token=token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context.jobs.start_monitor()
        try:
            context.serving.start()
            yield
        finally:
            context.jobs.shutdown()
            context.serving.close()
            engine.dispose()

    # No /docs or /redoc: FastAPI's Swagger UI and ReDoc pages load their assets from a CDN,
    # and every asset of this app is local. The schema itself is /openapi.json.
    app = FastAPI(title="modelmint app", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Projects, data, labels, training jobs, evaluation and deployment."
                              " Every page of the web app uses this API.")
    app.state.ctx = context
    app.middleware("http")(make_guard(token))
    app.add_middleware(Edge, allowed=allowed_hosts(settings))  # added last: runs first
    app.include_router(api_projects.router)
    app.include_router(api_boxes.router)
    app.include_router(api_jobs.router)
    app.include_router(api_deploy.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(MintError)
    async def mint_error(request: Request, exc: MintError) -> Response:
        return JSONResponse({"error": exc.message}, exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"error": problems}, 400)

    @app.post("/api/session", tags=["auth"], openapi_extra=LOGIN_BODY)
    async def login(request: Request) -> Response:
        """Exchange the token (form field ``token``) for the browser's HttpOnly,
        SameSite=Strict session cookie."""
        if token is None:
            return RedirectResponse("/", 303)  # on loopback there is nothing to sign in to
        try:
            given = (await request.form()).get("token")
        except HTTPException:  # not a form at all: no token either
            given = None
        if not isinstance(given, str) or not token_matches(given.strip(), token):
            raise Unauthorized("wrong access token")
        reply = RedirectResponse("/", 303)
        reply.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                         max_age=30 * 24 * 3600)
        return reply

    return app


def run_app(settings: AppSettings, console: Console) -> None:
    app = create_app(settings, console)
    console.print(f"modelmint app on http://{settings.host}:{settings.port} "
                  f"(data in {settings.data_dir}); Ctrl-C stops it")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
