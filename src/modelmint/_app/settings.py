"""``mint app``'s settings: the command-line ones take their defaults from the ``app`` table
(:data:`modelmint._settings.APP`), where their help lives too."""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .._repository import ModelRepository, open_repository
from .._repository.s3 import is_s3_uri
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
    repo: str | None = default(APP, "repo")
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
        """The default repository: a folder in the data dir."""
        return self.data_dir / "models"

    @property
    def repo_location(self) -> str:
        """Where every training result is published (`mint train --repo`): ``repo`` (a folder or
        an ``s3://`` URI) or :attr:`models_dir`."""
        return self.repo or str(self.models_dir)

    @cached_property
    def repository(self) -> ModelRepository:
        """The repository at :attr:`repo_location`; one instance, so an ``s3://`` one keeps its
        client, listing cache and local copies across requests."""
        return open_repository(self.repo_location)

    def repository_has(self, model: str) -> bool:
        """Whether the repository holds anything under ``model`` (published or not)."""
        if is_s3_uri(self.repo_location):  # the cache holds only what was read: ask the bucket
            return model in self.repository.model_folders()[0]
        return (self.repository.root / model).exists()

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
