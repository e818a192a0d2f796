"""Shared by the command modules: the error console, one JSON line out, and commands generated
from a settings table (:mod:`modelmint._settings`)."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from types import GenericAlias
from typing import Annotated, Any

import typer
from rich.console import Console

from ._settings import Setting
from .errors import MintError, TrainingInterrupted

err_console = Console(stderr=True)


def fail(exc: MintError) -> None:
    """Print a MintError's message and exit: 130 for an interrupted job, 2 otherwise."""
    # Not wrapped at the console's width (80 columns when not a terminal): a message names
    # paths and fields, which must stay whole for whoever reads, copies or greps the log.
    err_console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
    raise typer.Exit(130 if isinstance(exc, TrainingInterrupted) else 2)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def command_from(table: tuple[Setting, ...], body: Callable[[dict[str, Any]], None],
                 name: str, doc: str) -> Callable[..., None]:
    """A Typer command whose parameters are ``table``'s settings; it calls ``body`` with the
    parsed values by setting name. Typer reads the parameters from ``__signature__``."""

    def command(**values: Any) -> None:
        body(values)

    command.__name__ = command.__qualname__ = name
    command.__doc__ = doc
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [_parameter(s) for s in table])
    return command


def _parameter(setting: Setting) -> inspect.Parameter:
    kind: Any = GenericAlias(list, (setting.type,)) if setting.repeatable else setting.type
    if setting.default is None and not setting.required:
        kind = kind | None
    info = (typer.Argument(help=setting.help, min=setting.min, max=setting.max)
            if setting.argument else
            typer.Option(*[d for d in (setting.flag,) if d], help=setting.help,
                         min=setting.min, max=setting.max))
    return inspect.Parameter(
        setting.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, info],
        default=inspect.Parameter.empty if setting.required else setting.default)
