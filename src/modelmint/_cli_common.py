"""Helpers shared by the command modules: the error console and one JSON line out."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from .errors import MintError, TrainingInterrupted

err_console = Console(stderr=True)


def fail(exc: MintError) -> None:
    """Print a MintError's message and exit: 130 for an interrupted job, 2 otherwise."""
    err_console.print(f"[bold red]error:[/] {exc.message}")
    raise typer.Exit(130 if isinstance(exc, TrainingInterrupted) else 2)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
