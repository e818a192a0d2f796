"""Check KServe resources (YAML files given on the command line) against the ``kserve``
package's generated models, field by field: every key known, every nested object of its
declared type. Run as a script: kserve's import registers protos that clash with the server's
in the same interpreter."""

from __future__ import annotations

import sys
from typing import Any

import kserve.models
import kubernetes.client
import yaml

KINDS = {"ServingRuntime": "V1alpha1ServingRuntime",
         "InferenceService": "V1beta1InferenceService"}


def _strict(value: Any, kind: str, where: str) -> None:
    """``value`` must fit the generated model type ``kind`` (kserve's or kubernetes'): every
    key known, every nested object of its declared type."""
    if kind.lower().startswith("list["):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            _strict(item, kind[5:-1], f"{where}[{i}]")
        return
    if kind.lower().startswith(("dict(", "dict[")):
        assert isinstance(value, dict), f"{where}: expected a mapping"
        inner = kind[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            _strict(item, inner, f"{where}.{key}")
        return
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
              "datetime": str, "date": str}
    if kind in simple:
        assert isinstance(value, simple[kind]), f"{where}: expected {kind}, got {value!r}"
        return
    cls = getattr(kserve.models, kind, None) or getattr(kubernetes.client, kind)
    assert isinstance(value, dict), f"{where}: expected a {kind} object"
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    for key, item in value.items():
        assert key in by_key, f"{where}: {key!r} is not a field of {kind}"
        _strict(item, cls.openapi_types[by_key[key]], f"{where}.{key}")


def main(paths: list[str]) -> int:
    for path in paths:
        with open(path) as fh:
            for doc in yaml.safe_load_all(fh):
                if doc:
                    _strict(doc, KINDS[doc["kind"]], f"{path}: {doc['kind']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
