"""Nothing the platform reads back from disk is unpickled: checkpoints, caches and trial
artifacts are safetensors and JSON, so a file a shared study points at cannot run code."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "modelmint"


def unsafe_calls(source: str) -> list[str]:
    """``torch.load`` without ``weights_only=True``, and any ``pickle``/``joblib`` load."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = ast.unparse(node.func.value)
        name = node.func.attr
        if owner == "torch" and name == "load":
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                       and k.value.value is True for k in node.keywords)
            if not safe:
                found.append(f"{node.lineno}: torch.load without weights_only=True")
        if owner in ("pickle", "joblib", "dill", "cloudpickle") and name in ("load", "loads"):
            found.append(f"{node.lineno}: {owner}.{name}")
    return found


def test_no_module_unpickles() -> None:
    offenders = [f"{path.relative_to(SRC)}:{line}" for path in sorted(SRC.rglob("*.py"))
                 for line in unsafe_calls(path.read_text())]
    assert offenders == []


def test_the_check_finds_an_unsafe_load() -> None:
    source = ("import torch, pickle\ntorch.load('a', weights_only=False)\ntorch.load('b')\n"
              "pickle.loads(b'')\ntorch.load('c', weights_only=True)\n")
    assert [line.split(":")[0] for line in unsafe_calls(source)] == ["2", "3", "4"]
