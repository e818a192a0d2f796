"""``mint app``'s settings: the command-line ones take their defaults from the ``app`` table
(:data:`modelmint._settings.APP`), where their help lives too."""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .._settings import APP, default
from ..errors import InvalidInput


@dataclass
class AppSettings:
    data_dir: Path = field(default_factory=lambda: Path(default(APP, "data_dir")))
    database: str | None = default(APP, "database")
    host: str = default(APP, "host")
    allowed_hosts: list[str] | None = field(
        default_factory=lambda: default(APP, "allowed_hosts"))
    port: int = default(APP, "port")
    serve_url: str | None = default(APP, "serve_url")
    upload_max_bytes: int = default(APP, "upload_max_bytes")
    zip_max_entries: int = default(APP, "zip_max_entries")
    zip_max_uncompressed: int = default(APP, "zip_max_uncompressed")
    zip_max_ratio: float = default(APP, "zip_max_ratio")
    # Not on the command line:
    python: str = sys.executable  # runs the `mint train` / `mint serve` subprocesses
    job_poll_s: float = 1.0  # how often running jobs are checked

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()  # the default is "~/.modelmint"
        self.allowed_hosts = [_host_name(h) for h in self.allowed_hosts or ()]

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'modelmint.db'}"

    @property
    def requires_token(self) -> bool:
        """Loopback is only reachable from this machine; any other bind needs the token."""
        if self.host in ("localhost", ""):
            return self.host == ""  # "" binds every interface
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return True  # a host name: it may resolve to anything

    @property
    def projects_dir(self) -> Path:
        return self.data_dir / "projects"

    @property
    def models_dir(self) -> Path:
        """Every published training result (the repository `mint train --repo` writes)."""
        return self.data_dir / "models"

    @property
    def serving_dir(self) -> Path:
        """Only deployed versions: the repository the app's `mint serve` serves."""
        return self.data_dir / "serving"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"

    def make_dirs(self) -> None:
        for path in (self.data_dir, self.projects_dir, self.models_dir, self.serving_dir,
                     self.jobs_dir):
            path.mkdir(parents=True, exist_ok=True)



def _host_name(value: str) -> str:
    """An ``--allowed-host`` value as the Host check compares it: lowercase, no brackets."""
    name = value.strip().lower().rstrip(".")
    if name == "*":  # any name: no Host check (a proxy in front checks it)
        return name
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name, re.ASCII):
        raise InvalidInput(f"--allowed-host {value!r}: expected a host name or an IP address, "
                           "without port or scheme (e.g. mint.example.org or 192.0.2.7)")
    return name
