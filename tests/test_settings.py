"""The settings tables are the one source of `mint serve/train/app/optimize`'s options, of
docs/settings.md, of AppSettings' defaults and of the ports and size limits used in src."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner

from modelmint import _settings
from modelmint._app import AppSettings
from modelmint._settings import APP, COMMANDS, Setting
from modelmint.cli import app

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "modelmint"


def parameters(command: str) -> dict[str, TyperArgument | TyperOption]:
    """The parameters Typer built for ``mint COMMAND``, by name."""
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    params = group.commands[command].params
    assert all(isinstance(p, TyperArgument | TyperOption) for p in params)
    return {str(p.name): p for p in params if isinstance(p, TyperArgument | TyperOption)}


def test_docs_settings_md_is_what_the_tables_render() -> None:
    rendered = (ROOT / "docs" / "settings.md").read_text()
    assert rendered == _settings.render_markdown(), (
        "docs/settings.md is stale: run .venv/bin/python -m modelmint._settings > "
        "docs/settings.md")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_the_command_comes_from_its_table(command: str) -> None:
    table = {s.name: s for s in COMMANDS[command]}
    params = parameters(command)
    assert set(params) == set(table)
    for name, param in params.items():
        setting: Setting = table[name]
        assert isinstance(param, TyperArgument) == setting.argument, name
        assert param.required == setting.required, name
        if isinstance(param, TyperOption):
            assert setting.option in param.opts, name
            assert param.help == setting.help, name
            assert param.multiple == setting.repeatable, name
            if not setting.required and not setting.repeatable:
                assert param.default == setting.default, name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_option(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for setting in COMMANDS[command]:
        shown = setting.name if setting.argument else setting.option
        assert shown in result.output, shown


def test_option_values_reach_the_command() -> None:
    result = CliRunner().invoke(app, ["serve", "/no/such/repository", "--http-port", "0"])
    assert result.exit_code == 2
    assert "/no/such/repository" in result.output
    bad = CliRunner().invoke(app, ["optimize", "/no/such/model", "--rounds", "0"])
    assert bad.exit_code == 2 and "--rounds" in bad.output


def test_app_settings_default_to_the_app_table() -> None:
    settings = AppSettings()
    for setting in APP:
        expected: Any = setting.default
        if setting.repeatable and expected is None:  # a repeatable option given no times
            expected = []
        if isinstance(expected, Path):
            expected = expected.expanduser()
        assert getattr(settings, setting.name) == expected, setting.name
    assert settings.data_dir == Path.home() / ".modelmint"


# --- ports and size limits are said once ---------------------------------------------------

LIMITS = {value: name for name, value in vars(_settings).items()
          if name.startswith("DEFAULT_") and name.endswith(("_PORT", "_BYTES"))
          and type(value) is int}


OPERATORS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Mult: operator.mul, ast.Pow: operator.pow, ast.LShift: operator.lshift,
    ast.Add: operator.add, ast.Sub: operator.sub}


def constant_value(node: ast.AST) -> Any:
    """The value of an integer, or of arithmetic on integers only (``16 * 1024 * 1024``)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = constant_value(node.left), constant_value(node.right)
        if type(left) is not int or type(right) is not int:
            return None
        if isinstance(node.op, ast.Pow | ast.LShift) and not 0 <= right < 256:
            return None  # not a size anyone writes; and no huge numbers built here
        return OPERATORS[type(node.op)](left, right)
    return None


def repeated_limits(tree: ast.AST) -> list[tuple[int, str]]:
    found, inside = [], set()
    for node in ast.walk(tree):
        if id(node) in inside or not isinstance(node, ast.Constant | ast.BinOp):
            continue
        value = constant_value(node)
        if type(value) is int and value in LIMITS:
            found.append((node.lineno, LIMITS[value]))
        if isinstance(node, ast.BinOp):  # its operands are part of this one number
            inside.update(id(n) for n in ast.walk(node))
    return found


def test_ports_and_size_limits_are_only_defined_in_settings() -> None:
    assert {"DEFAULT_HTTP_PORT", "DEFAULT_GRPC_PORT", "DEFAULT_METRICS_PORT",
            "DEFAULT_APP_PORT", "DEFAULT_MAX_REQUEST_BYTES"} <= set(LIMITS.values())
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "_settings.py":
            continue
        for line, name in repeated_limits(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(ROOT)}:{line} repeats {name}")
    assert not offenders, "import these from modelmint._settings:\n" + "\n".join(offenders)


def test_the_literal_scan_finds_a_repeated_limit() -> None:
    code = ("PORT = 8001\nLIMIT = 16 * 1024 * 1024\nUPLOAD = 2 * 1024**3\n"
            "FMAX = 8000.0\nCHUNK = 16 * 1024\nURL = 'http://127.0.0.1:8000'\n")
    assert repeated_limits(ast.parse(code)) == [
        (1, "DEFAULT_GRPC_PORT"), (2, "DEFAULT_MAX_REQUEST_BYTES"),
        (3, "DEFAULT_UPLOAD_MAX_BYTES")]

