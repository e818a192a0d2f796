"""A version whose ONNX external data lies outside its folder is refused with its reason (over
the index, HTTP and gRPC readiness) and the previous version keeps serving; external data
inside the folder loads. The real server assembly, real clients."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx.external_data_helper import convert_model_to_external_data
from tritonclient.utils import InferenceServerException

from modelmint._repository import ONNX_FILE
from modelmint._serve.grpc import NOT_READY_REASON
from modelmint._serve.lifecycle import FAILED, READY
from modelmint._serve.proto import grpc_predict_v2_pb2 as pb
from modelmint._serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

BATCH = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
WEIGHTS = "weights.bin"


def with_external_weights(version: Path, location: str | None = None) -> None:
    """Move the version's weights to ``weights.bin`` beside the graph, then (if given) point
    every tensor at ``location`` instead, as a crafted model would."""
    model = onnx.load(version / ONNX_FILE)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=WEIGHTS,
                                   size_threshold=0)
    onnx.save_model(model, version / ONNX_FILE)
    if location is None:
        return
    graph = onnx.load(version / ONNX_FILE, load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(graph, version / ONNX_FILE)


def infer_version(client: httpclient.InferenceServerClient) -> str:
    tensor = httpclient.InferInput("input", list(BATCH.shape), "FP32")
    tensor.set_data_from_numpy(BATCH)
    return str(client.infer("tiny", [tensor]).get_response()["model_version"])


def test_external_data_outside_the_version_is_refused(
        tmp_path: Path, publish: Callable[..., Path],
        start_full_server: Callable[..., Any]) -> None:
    repo = tmp_path / "repo"
    publish(repo, seed=1)
    outside = tmp_path / "outside.bin"
    with start_full_server(repo, grpc_port=0) as (server, _):
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        channel = grpc.insecure_channel(server.grpc.address)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            crafted = {"../secret.bin": "which leads outside it",
                       str(outside): "an absolute path",
                       WEIGHTS: "which leads outside it through a symbolic link"}
            for location, why in crafted.items():
                version = publish(repo, seed=2)
                with_external_weights(version, location)
                stolen = version / WEIGHTS
                # The file the crafted model points at holds exactly the weights it expects:
                # only the check can tell this model from a good one.
                shutil.copy(stolen, version.parent / "secret.bin")
                shutil.copy(stolen, outside)
                stolen.unlink()
                if location == WEIGHTS:
                    os.symlink(outside, stolen)
                with pytest.raises(InferenceServerException, match="failed to load") as info:
                    client.load_model("tiny")
                assert info.value.status() == "400"
                expected = f"takes its data from {location!r}, {why}; external data must be " \
                           "a file inside the version folder"
                states = {e["version"]: e for e in client.get_model_repository_index()
                          if e["name"] == "tiny"}
                assert states[version.name]["state"] == FAILED
                assert expected in states[version.name]["reason"]
                assert infer_version(client) == "1"  # the previous version keeps serving

                ready = httpx.get(f"{server.url}/v2/models/tiny/versions/{version.name}/ready")
                assert ready.status_code == 400 and expected in ready.json()["error"]
                reply, call = stub.ModelReady.with_call(
                    pb.ModelReadyRequest(name="tiny", version=version.name))
                assert not reply.ready
                assert expected in dict(call.trailing_metadata())[NOT_READY_REASON]

            good = publish(repo, seed=3)
            with_external_weights(good)
            client.load_model("tiny")
            assert infer_version(client) == good.name
            assert {e["version"]: e["state"] for e in client.get_model_repository_index()
                    if e["name"] == "tiny"}[good.name] == READY
        finally:
            channel.close()
            client.close()
