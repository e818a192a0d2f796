"""What every request meets first: its ``Host`` must be a name this app answers to, and every
response carries the headers that keep browsers from framing it or guessing its content type.

The Host check stops DNS rebinding. A page at ``http://rebind.attacker.example:8080`` whose name
the attacker then points at 127.0.0.1 reaches this app as its *own* origin: the browser sends a
matching ``Origin``, so the cross-site guard passes it. Only ``Host`` still carries the
attacker's name, so a request whose Host is a name other than a loopback name, the ``--host``
address or an ``--allowed-host`` is refused (400) before any route, page or static file answers.
An IP address is always accepted: no DNS answer is involved in reaching it.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._serve.auth import ANY_HOST, LOOPBACK_NAMES
from .settings import AppSettings

_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::[0-9]{1,5})?",
                   re.ASCII)

# The pages load only their own scripts, styles and images (and blob: previews of a file the
# user picks to "try it"); nothing may frame them.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob:; media-src 'self' blob:; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; "
               "frame-ancestors 'none'")
# A self-contained report (inline styles and SVG, no script): it runs nothing and loads nothing.
REPORT_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                 "frame-ancestors 'none'")
_ALWAYS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff",
           "referrer-policy": "same-origin"}


def allowed_hosts(settings: AppSettings) -> frozenset[str]:
    """Loopback names, the address ``--host`` binds (unless it is every interface) and every
    ``--allowed-host``; ports are not part of a name."""
    names = set(LOOPBACK_NAMES) | set(settings.allowed_hosts or ())
    bound = settings.host.strip("[]").lower()
    if bound not in ("", "0.0.0.0", "::"):
        names.add(bound)
    return frozenset(names)


def host_name(header: str) -> str | None:
    """The name in a Host header, lowercase, without port, brackets or a final dot
    (``[::1]:8080`` → ``::1``); None when it is no host name at all."""
    match = _HOST.fullmatch(header.strip().lower())
    if match is None:
        return None
    name = match["v6"] or match["name"].rstrip(".")
    return name or None


def is_allowed(name: str | None, allowed: frozenset[str]) -> bool:
    if name is None:
        return False
    if name in allowed or ANY_HOST in allowed:
        return True
    try:  # an address is not a name an attacker's DNS can point elsewhere
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Edge:
    """ASGI middleware: the Host allowlist and the browser security headers, on every route."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in _ALWAYS.items():
                    headers[key] = value
                if "content-security-policy" not in headers:  # a route may set its own
                    headers["content-security-policy"] = PAGE_POLICY
            await send(message)

        host = Headers(scope=scope).get("host", "")
        if not is_allowed(host_name(host), self.allowed):
            shown = host[:100] or "(none)"
            refusal = JSONResponse({"error": (
                f"Host {shown!r} is not a name this app answers to (a guard against DNS "
                "rebinding): loopback names, IP addresses and the --host address are; start "
                "the app with --allowed-host NAME to add the name clients use")}, 400)
            await refusal(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)
