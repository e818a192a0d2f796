"""Who may call what on the model server, and what an error may tell a client.

Every route is in one of three classes (:func:`http_route_class`, and the gRPC adapter's own
table of RPC names):

- ``health``: liveness and readiness. Always open, because orchestrators probe them with
  whatever Host the pod or machine has; they reveal nothing but "up" and "ready".
- ``management``: the model repository extension (index, load, unload). It changes what is
  served, so it is the one class a web page must never reach.
- ``data``: inference, metadata and statistics.

The rules (:class:`AccessPolicy`):

1. Every route but health checks ``Host`` against an allowlist: loopback names, the bind
   address, ``--allowed-host`` names. A DNS-rebinding page reaches a loopback server under its
   own name, so a name nobody configured is refused. An IP address is always accepted: a
   rebinding attack needs a name, and clients on the network often use the address.
2. Management refuses a cross-origin ``Origin`` and any body but JSON (a form post is the one
   cross-site request a browser sends without asking first).
3. With a token (``--token-file``), management needs ``Authorization: Bearer TOKEN``, and so do
   data routes when ``require_token_for_inference`` is set. Off loopback the server does not
   start without a token unless told ``--insecure-no-token``.

The token file is the app's scheme too (``mint app``): made with ``O_EXCL`` and mode 0600, and
compared in constant time.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import MintError

RouteClass = Literal["health", "management", "data"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_HOST = "*"  # --allowed-host '*': no Host check (behind a proxy that checks it)
TOKEN_SOURCE = "the token is in the file the server's --token-file names"

_HEALTH_PATH = re.compile(r"/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready")
_MANAGEMENT_PREFIX = "/v2/repository"
_DNS_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


# --- the token file ------------------------------------------------------------------------

def load_or_create_token(path: Path) -> tuple[str, bool]:
    """(token, created now). A new token is written with O_EXCL and mode 0600, so it is never
    readable by other users, and two processes starting at once agree on one token."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path), False
    except OSError as exc:
        raise MintError(f"cannot create the token file {path}: {exc.strerror or exc}") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MintError(f"cannot read the token file {path}: {exc}") from exc
    if not token:
        raise MintError(f"the token file {path} is empty: write a token into it, or delete it "
                        "to have a new one generated")
    return token


def token_matches(presented: str | None, token: str) -> bool:
    """Constant-time comparison. Bytes, because ``compare_digest`` refuses non-ASCII text and a
    header may carry any byte."""
    if presented is None:
        return False
    return secrets.compare_digest(presented.encode("utf-8", "surrogateescape"),
                                  token.encode("utf-8"))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value, else None."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


# --- the policy ----------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether binding ``host`` is reachable from this machine only. A name other than
    localhost may resolve to anything, and "" binds every interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str | None:
    """The lower-case name of a Host header or --allowed-host value, without port or brackets;
    None when it is neither a DNS name nor an IP address."""
    try:
        name = urlsplit("//" + value.strip()).hostname
    except ValueError:
        return None
    name = name.rstrip(".") if name else None
    return name if name and (_DNS_NAME.fullmatch(name) or _is_ip(name)) else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class AccessPolicy:
    """What a request needs to be served. The default is a loopback server without a token."""

    token: str | None = None
    require_token_for_inference: bool = False
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES

    def host_allowed(self, host_header: str | None) -> bool:
        if host_header is None or ANY_HOST in self.allowed_hosts:
            return True  # HTTP/1.0 without Host: not a browser
        name = _host_name(host_header)
        return name is not None and (name in self.allowed_hosts or _is_ip(name))

    def token_required(self, route: RouteClass) -> bool:
        if self.token is None or route == "health":
            return False
        return route == "management" or self.require_token_for_inference

    def authorized(self, authorization: str | None) -> bool:
        return self.token is None or token_matches(bearer_token(authorization), self.token)


def access_policy(host: str, token_file: Path | None = None, *,
                  require_token_for_inference: bool = False,
                  allowed_hosts: Iterable[str] = (), insecure_no_token: bool = False
                  ) -> tuple[AccessPolicy, bool]:
    """The policy of a server bound to ``host``, and whether its token was created just now
    (the caller shows a new token once). Raises MintError for a combination that would leave
    the server open by accident."""
    if token_file is not None and insecure_no_token:
        raise MintError("--token-file and --insecure-no-token contradict each other: give one")
    if require_token_for_inference and token_file is None:
        raise MintError("--require-token-for-inference needs --token-file (where the token is "
                        "kept, generated if missing)")
    if token_file is None and not is_loopback(host) and not insecure_no_token:
        raise MintError(
            f"refusing to serve on {host or 'every interface'!r} without an access token: "
            "anyone who can reach it could load and unload models. Give --token-file PATH "
            "(a token is generated there if the file is missing), or --insecure-no-token if "
            "the network is trusted")
    names = set(LOOPBACK_NAMES)
    for value in (host, *allowed_hosts):
        name = ANY_HOST if value.strip() == ANY_HOST else _host_name(value)
        if name is None and value != host:
            raise MintError(f"--allowed-host {value!r} is not a host name")
        if name:
            names.add(name)
    token, created = (None, False) if token_file is None else load_or_create_token(token_file)
    return AccessPolicy(token, require_token_for_inference, frozenset(names)), created


# --- HTTP ----------------------------------------------------------------------------------

def http_route_class(path: str) -> RouteClass:
    if _HEALTH_PATH.fullmatch(path):
        return "health"
    if path == _MANAGEMENT_PREFIX or path.startswith(_MANAGEMENT_PREFIX + "/"):
        return "management"
    return "data"


def http_refusal(policy: AccessPolicy, path: str, headers: Headers
                 ) -> tuple[int, str] | None:
    """(status, message) when the request may not be served, else None."""
    route = http_route_class(path)
    if route == "health":
        return None
    host = headers.get("host")
    if not policy.host_allowed(host):
        name = _host_name(host or "") or host
        return 421, (f"Host {host!r} is not a name this server answers to (a guard against "
                     f"DNS rebinding); start the server with --allowed-host {name} to accept it")
    if route == "management":
        origin = headers.get("origin")
        if origin is not None and (origin == "null"
                                   or urlsplit(origin).netloc.lower() != (host or "").lower()):
            return 403, (f"cross-origin request refused: Origin {origin!r} is not this server "
                         "(the repository API takes requests from scripts and tools, not from "
                         "other web pages)")
        content_type = headers.get("content-type")
        if content_type is not None and (
                content_type.partition(";")[0].strip().lower() != "application/json"):
            return 415, (f"Content-Type {content_type!r} is not accepted by the repository "
                         "API: send application/json, or no body")
    if policy.token_required(route) and not policy.authorized(headers.get("authorization")):
        what = "the repository API" if route == "management" else "this server"
        return 401, (f"{what} needs the server's access token: send 'Authorization: Bearer "
                     f"TOKEN' ({TOKEN_SOURCE})")
    return None


class AccessControl:
    """ASGI middleware applying :func:`http_refusal` before any route runs, so an unknown path
    or a wrong method is refused the same way as a real one."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = http_refusal(self.policy, scope["path"], Headers(scope=scope))
            if refusal is not None:
                status, message = refusal
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                await JSONResponse({"error": message}, status, headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- what a client is told -----------------------------------------------------------------

def without_paths(message: str, roots: Iterable[Path]) -> str:
    """``message`` with every repository root replaced by ``REPO``: errors name the model and
    version, never where the server keeps its files."""
    for root in sorted({str(r) for r in roots if str(r) not in ("", "/", ".")},
                       key=len, reverse=True):
        message = message.replace(root, "REPO")
    return message
