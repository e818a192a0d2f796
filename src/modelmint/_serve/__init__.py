"""The model server: KServe V2 / Open Inference Protocol over one transport-neutral data plane.

``create_app`` builds the HTTP app (Starlette: V2 and TF Serving REST), ``run_server`` serves
it with uvicorn and the V2 gRPC service (grpc.aio) on one event loop, and ``DataPlane`` answers
requests in-process (the SDK's no-server path). Never imports torch.
"""

from .dataplane import DataPlane, LoadedModel
from .http import create_app
from .server import run_server
from .types import InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput

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
