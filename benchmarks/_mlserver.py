"""MLServer 1.7.1 as a benchmark peer: its own virtual environment, a model folder with a small
custom ONNX runtime, and start/stop with readiness polling.

MLServer pins its own dependency tree (FastAPI, pydantic, its uvloop), so it lives in
``benchmarks/.venv-mlserver`` (gitignored) rather than in the project's venv. Importing this
module has no side effects; :func:`ensure_venv` creates the venv on first use (a few minutes).

The runtime gives MLServer exactly our session settings (intra-op threads configurable, one
inter-op thread, no spinning) and runs the session the way MLServer's own runtimes do: inside
``predict`` (with ``parallel_workers`` > 0, in MLServer's worker processes).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from modelmint._tensor_names import PROBABILITIES, TENSOR_INPUT

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-mlserver"
PACKAGES = ("mlserver==1.7.1", "uvloop<0.22", "onnxruntime", "numpy")
MODEL_NAME = "mobilenet"

RUNTIME = '''
"""An MLServer runtime for a modelmint-exported classifier (written by benchmarks/_mlserver.py)."""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxClassifier(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("threads", 1))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = await get_model_uri(self.settings)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = self.decode(payload.inputs[0], default_codec=NumpyCodec)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        probs = self.session.run(["probabilities"], {"input": batch})[0]
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output("probabilities", probs)])
'''


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """Create the MLServer venv if it is missing (``python3 -m venv`` + pip); its python."""
    marker = VENV / ".complete"
    if not marker.exists():
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES], check=True)
        marker.write_text(" ".join(PACKAGES) + "\n")
    return venv_python()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_model_dir(root: Path, onnx: Path, threads: int) -> Path:
    """``root/mobilenet/{model-settings.json, runtime.py}`` serving ``onnx`` (absolute path)."""
    folder = root / MODEL_NAME
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "runtime.py").write_text(RUNTIME)
    settings = {
        "name": MODEL_NAME,
        "implementation": "runtime.OnnxClassifier",
        "inputs": [{"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, 2]}],
        "parameters": {"uri": str(onnx.resolve()), "extra": {"threads": threads}},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return root


def start_mlserver(model_dir: Path, http_port: int, grpc_port: int, parallel_workers: int,
                   threads: int, onnx: Path | None = None, log: Path | None = None,
                   timeout: float = 180.0) -> subprocess.Popen[bytes]:
    """Start ``mlserver start model_dir`` and wait until the model answers ready.

    With ``onnx`` given, (re)writes the model folder for it with ``threads`` intra-op threads
    first. Server settings are those a production user would pick: debug (per-request
    logging) off, metrics on (as ours), everything else default.
    """
    python = ensure_venv()
    if onnx is not None:
        write_model_dir(model_dir, onnx, threads)
    settings = {"debug": False, "host": "127.0.0.1", "http_port": http_port,
                "grpc_port": grpc_port, "metrics_port": free_port(),
                "parallel_workers": parallel_workers,
                "metrics_dir": str(model_dir / ".metrics"),
                "environments_dir": str(model_dir / ".envs")}
    (model_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    # Only the settings file decides: no MLSERVER_* from the caller's environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_")}
    env["PYTHONPATH"] = str(model_dir / MODEL_NAME)
    out = open(log or os.devnull, "ab")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen([str(python.parent / "mlserver"), "start", str(model_dir)],
                            cwd=model_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out.close()
    try:
        wait_ready(f"http://127.0.0.1:{http_port}", proc, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float,
               model: str = MODEL_NAME) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/v2/models/{model}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: model {model!r} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the server's whole session (MLServer's workers too), SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        except ProcessLookupError:
            pass


if __name__ == "__main__":  # python benchmarks/_mlserver.py: just build the venv
    print(ensure_venv(), file=sys.stderr)
