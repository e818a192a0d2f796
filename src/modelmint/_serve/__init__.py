"""The model server: KServe V2 / Open Inference Protocol over one transport-neutral data plane.

``create_app`` builds the HTTP app (Starlette: V2 and TF Serving REST), ``run_server`` serves
it with uvicorn and the V2 gRPC service (grpc.aio) on one event loop, and ``DataPlane`` answers
requests in-process (the SDK's no-server path). Never imports torch.

The names below load their modules on first use, so a client that only needs
:mod:`.v2client` does not pay for the server (uvicorn, grpc, starlette).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataplane import DataPlane, LoadedModel
    from .http import create_app
    from .server import run_server
    from .types import InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput

_HOMES = {"DataPlane": ".dataplane", "LoadedModel": ".dataplane", "create_app": ".http",
          "run_server": ".server", "InferInput": ".types", "InferOutput": ".types",
          "InferRequest": ".types", "InferResponse": ".types", "RequestedOutput": ".types"}

__all__ = [
    "DataPlane",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "LoadedModel",
    "RequestedOutput",
    "create_app",
    "run_server",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
