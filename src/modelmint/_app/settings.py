"""Every setting of ``mint app``, declared once with its default and help (the CLI reads these)."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

GIB = 1024**3


@dataclass
class AppSettings:
    data_dir: Path = field(default_factory=lambda: Path.home() / ".modelmint", metadata={
        "help": "Where projects, uploads, runs, models and the SQLite database live."})
    database: str | None = field(default=None, metadata={
        "help": "SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite in --data-dir)."})
    host: str = field(default="127.0.0.1", metadata={
        "help": "Address to bind; anything but loopback requires the access token."})
    port: int = field(default=8080, metadata={"help": "HTTP port of the app (0: any free port)."})
    serve_url: str | None = field(default=None, metadata={
        "help": "Use this running `mint serve DATA_DIR/serving` instead of starting one."})
    upload_max_bytes: int = field(default=2 * GIB, metadata={
        "help": "Largest single upload (a zip or a file), bytes."})
    zip_max_entries: int = field(default=100_000, metadata={"help": "Most entries in one zip."})
    zip_max_uncompressed: int = field(default=10 * GIB, metadata={
        "help": "Largest total uncompressed size of one zip, bytes."})
    zip_max_ratio: float = field(default=100.0, metadata={
        "help": "Largest compression ratio (uncompressed / compressed) of a zip or an entry."})
    python: str = field(default=sys.executable, metadata={
        "help": "Interpreter that runs `mint train` / `mint serve` subprocesses."})
    job_poll_s: float = field(default=1.0, metadata={"help": "How often jobs are checked."})

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


def help_of(name: str) -> str:
    for f in fields(AppSettings):
        if f.name == name:
            return str(f.metadata["help"])
    raise KeyError(name)
