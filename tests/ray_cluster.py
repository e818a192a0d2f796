"""A local multi-node Ray cluster on loopback and a tensor model whose every version answers
differently, for ``mint serve --ray`` (tests/serve/test_ray_serve.py) and search trials on Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelmint._repository import (
    METADATA_FILE,
    ONNX_FILE,
    WARMUP_DIR,
    ModelMetadata,
    ModelRepository,
    TensorInputSpec,
    TensorSpec,
)
from modelmint._repository.metadata import OPSET
from modelmint._serve.v2client import warmup_request
from modelmint._tensor_names import TENSOR_INPUT

MODEL = "regress"
OBJECT_STORE_BYTES = 75 * 1024 * 1024  # Ray's minimum
INPUT = np.arange(4, dtype=np.float32).reshape(1, 4) / 4


def weights(version: int) -> np.ndarray:
    """Each version multiplies by its own matrix: an answer says which version gave it."""
    return np.random.default_rng(version).standard_normal((4, 2)).astype(np.float32)


def graph(version: int) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", [TENSOR_INPUT, "w"], ["prediction"])]
    g = helper.make_graph(
        nodes, MODEL, [helper.make_tensor_value_info(TENSOR_INPUT, TensorProto.FLOAT,
                                                     ["batch", 4])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights(version), "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def publish(root: Path, corrupt: bool = False) -> int:
    """Publish the next version of :data:`MODEL` (atomically); ``corrupt``: its model.onnx is
    not ONNX, so it fails to load."""
    meta = ModelMetadata(name=MODEL, labels=[], architecture="matmul", task="regression",
                         preprocessing=TensorInputSpec(shape=[4]),
                         outputs=[TensorSpec("prediction", "FP32", [-1, 2])])

    def write(tmp: Path, version: int) -> None:
        if corrupt:
            (tmp / ONNX_FILE).write_bytes(b"\x00not a protobuf" * 64)
        else:
            onnx.save(graph(version), tmp / ONNX_FILE)
        meta.version = version
        (tmp / METADATA_FILE).write_text(json.dumps(meta.to_json()))
        (tmp / WARMUP_DIR).mkdir()
        request = warmup_request(TENSOR_INPUT, INPUT)
        (tmp / WARMUP_DIR / "request-000.json").write_text(json.dumps(request))

    return ModelRepository(root).publish(MODEL, write).version


@contextmanager
def local_cluster(workers: int = 2) -> Iterator[Any]:
    """A head and ``workers`` worker nodes on loopback, one CPU and 75 MB of object store each;
    this process is connected to it as a driver."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Ray rewrites a loopback address to the machine's own IP before connecting (to reach a
    # remote cluster), which a cluster bound to loopback does not listen on; this switch keeps
    # 127.0.0.1, here and in every process started below (the nodes' workers, mint serve).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    node = {"num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES,
            "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(workers):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


@dataclass
class CliServer:
    """``mint serve --ray`` running in a subprocess."""

    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], url: str, log: Path, timeout_s: float = 150) -> CliServer:
        err = open(log, "w")  # noqa: SIM115 (lives as long as the process)
        proc = subprocess.Popen([sys.executable, "-m", "modelmint.cli", "serve", *args],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        err.close()
        server = cls(proc, url)
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                server.lines.append(line)
                if line.startswith("serving "):
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout_s) or proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"mint serve --ray did not start: {''.join(server.lines)}"
                               f"{log.read_text()[-3000:]}")
        return server

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)


@dataclass
class Answer:
    at: float
    version: int | None  # None: failed
    attempts: int
    error: str = ""


class RequestLoop:
    """One client sending requests back to back on a thread until stopped; each request is
    tried up to ``attempts`` times (0.2 s apart). Checks every answer against the weights of
    the version that says it answered."""

    def __init__(self, url: str, attempts: int = 1) -> None:
        self.url = url.removeprefix("http://")
        self.attempts = attempts
        self.answers: list[Answer] = []
        self.first_try_failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def once(self, client: Any, tensor: Any) -> Answer:
        error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                result = client.infer(MODEL, [tensor])
                version = int(result.get_response()["model_version"])
                np.testing.assert_allclose(result.as_numpy("prediction"),
                                           INPUT @ weights(version), rtol=1e-5)
                return Answer(time.monotonic(), version, attempt)
            except Exception as exc:
                error = repr(exc)
                if attempt == 1:
                    self.first_try_failures += 1
                time.sleep(0.2)
        return Answer(time.monotonic(), None, self.attempts, error)

    def _run(self) -> None:
        import tritonclient.http as httpclient

        # Made on this thread: the client's connections belong to the thread that made them.
        client = httpclient.InferenceServerClient(self.url, network_timeout=30)
        tensor = httpclient.InferInput(TENSOR_INPUT, list(INPUT.shape), "FP32")
        tensor.set_data_from_numpy(INPUT, binary_data=True)
        while not self._stop.is_set():
            self.answers.append(self.once(client, tensor))

    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.version is None]

    def versions(self) -> set[int | None]:
        return {a.version for a in self.answers}
