"""Access control: a token when the app is reachable from other machines, and a CSRF guard.

On loopback no token is needed. Bound anywhere else, the app generates a token at first start
(printed once, stored in ``DATA_DIR/token`` with mode 0600) and every request must carry it: API
clients as ``Authorization: Bearer TOKEN``, the browser as the HttpOnly, SameSite=Strict cookie
the login page sets. A SameSite=Strict cookie is never sent on a cross-site request, and every
state-changing request whose ``Origin`` is another site is refused even on loopback (where a
page on the web could otherwise POST to 127.0.0.1): that is the CSRF protection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from .._serve.auth import load_or_create_token as load_or_create_token_file
from .._serve.auth import token_matches
from .settings import AppSettings

COOKIE = "mint_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = ("/login", "/static/", "/api/session")


def load_or_create_token(settings: AppSettings) -> tuple[str, bool]:
    """(token, created now): the model server's token file scheme, in ``DATA_DIR/token``."""
    return load_or_create_token_file(settings.token_file)


def presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def _cross_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != request.headers.get("host", "")


def make_guard(token: str | None) -> Callable[[Request, Callable[[Request],
                                                                  Awaitable[Response]]],
                                              Awaitable[Response]]:
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if request.method not in SAFE_METHODS and _cross_origin(request):
            return JSONResponse({"error": "cross-site request refused (Origin "
                                 f"{request.headers.get('origin')!r} is not this app)"}, 403)
        if token is not None and not path.startswith(OPEN_PATHS):
            given = presented_token(request)
            if not token_matches(given, token):
                # A page visit goes to the login page; a change is refused, whatever its path.
                if (path.startswith("/api/") or path == "/openapi.json"
                        or request.method not in SAFE_METHODS):
                    return JSONResponse({"error": "this app needs its access token: send "
                                         "'Authorization: Bearer TOKEN' (printed at first "
                                         "start, stored in DATA_DIR/token)"}, 401)
                return RedirectResponse("/login", 303)
        return await call_next(request)

    return guard
