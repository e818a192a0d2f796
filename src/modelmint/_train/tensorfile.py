"""Tensors plus JSON in one safetensors file: what the trainer saves (checkpoints, activation
caches) without pickle, so loading a file can never run code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_META_KEY = "modelmint"


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write atomically (a temp file, then a rename): a crash leaves the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    owned: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        value = value.detach().contiguous()
        # safetensors refuses two keys over one storage (a view, a tied weight): copy those.
        if value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        owned[key] = value
    save_file(owned, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    tmp.replace(path)


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get(_META_KEY, "{}"))
    return load_file(str(path)), meta


def flatten_state(prefix: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                               dict[str, Any]]:
    """A nested state dict (an optimizer's) as flat tensors ``prefix.a.b`` plus the rest as
    JSON; :func:`unflatten_state` puts it back together."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, key: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[key] = node
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in node.items()]}
        if isinstance(node, list | tuple):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(node)]
        return node

    return tensors, walk(state, prefix)


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__dict__" in tree:
        return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree
