"""Deployment: the app's own `mint serve` (or one at ``--serve-url``) over ``DATA_DIR/serving``.

Deploying version V of a project copies ``models/<slug>/V`` to ``serving/<slug>/V`` (temp dir +
rename, like every publish), pins ``config.json`` to ``{"specific": [V]}`` and asks the server to
load it (KServe V2 repository API): the server loads and warms V in a new worker at idle
priority and switches over atomically, so a redeploy is a hot update without failed requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from .._repository import CONFIG_FILE
from .._serve.types import InferResponse
from .._serve.v2client import V2Client, bytes_request, classifications, encoded_input, output_array
from .._tensor_names import BOXES, CLASSES, COUNT, SCORE_THRESHOLD, SCORES
from ..errors import InvalidInput, MintError, ModelNotReady, NotFound
from .children import ChildRecord, spawn, stop
from .settings import AppSettings

READY_TIMEOUT_S = 60.0
INFER_TIMEOUT_S = 120.0


def free_port() -> int:
    """As ``modelmint._demo.free_port``, which cannot be imported here: it imports torch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serving:
    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None  # the server this app started
        self.pid: int | None = None  # the server this app owns: started or adopted
        self.url = (settings.serve_url or "").rstrip("/")
        self.grpc_url = ""
        self.client = httpx.Client(timeout=INFER_TIMEOUT_S)
        self.v2: V2Client | None = None  # made on first use: the URL is known after start()
        self.v2_lock = threading.Lock()

    @property
    def record_file(self) -> Path:
        """The owned server's pid, start time, command line and ports (see :mod:`.children`)."""
        return self.settings.data_dir / "serve.json"

    @property
    def log_file(self) -> Path:
        return self.settings.data_dir / "serve.log"

    def start(self) -> None:
        """Start the app's own `mint serve`, or adopt the one a previous app left running."""
        if self.url:
            return  # someone else owns the server
        if self._adopt():
            return
        http_port, grpc_port = free_port(), free_port()
        argv = [self.settings.python, "-m", "modelmint.cli", "serve",
                str(self.settings.serving_dir), "--http-port", str(http_port),
                "--grpc-port", str(grpc_port), "--metrics-port", "0"]
        with self.log_file.open("ab") as log:
            self.proc, record = spawn(argv, signal.SIGTERM, stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        replace(record, ports={"http": http_port, "grpc": grpc_port}).save(self.record_file)
        self._use_ports(http_port, grpc_port)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.record_file.unlink(missing_ok=True)
                raise MintError(f"mint serve exited with code {self.proc.returncode}; see "
                                f"{self.log_file}")
            if self._live():
                return
            time.sleep(0.2)
        raise MintError(f"mint serve not live after {READY_TIMEOUT_S:.0f}s; see {self.log_file}")

    def _adopt(self) -> bool:
        """Take over the server a previous app of this data dir recorded, when it is still that
        process and answers; stop it when it is that process but does not answer."""
        record = ChildRecord.load(self.record_file)
        if record is None:
            return False
        self.record_file.unlink(missing_ok=True)
        if not record.is_running():
            return False  # gone, or its pid now belongs to an unrelated process
        if {"http", "grpc"} <= record.ports.keys():
            self._use_ports(record.ports["http"], record.ports["grpc"])
            if self._live():
                self.pid = record.pid
                record.save(self.record_file)
                return True
        self.url = self.grpc_url = ""
        stop(record.pid)
        return False

    def _use_ports(self, http_port: int, grpc_port: int) -> None:
        self.url, self.grpc_url = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"

    def _live(self) -> bool:
        with contextlib.suppress(httpx.TransportError):
            return self.client.get(f"{self.url}/v2/health/live", timeout=1).status_code == 200
        return False

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc is None and self.pid is not None:  # adopted: not our child to wait for
            stop(self.pid)
        if self.pid is not None:
            self.record_file.unlink(missing_ok=True)
        self.client.close()
        if self.v2 is not None:
            self.v2.close()

    # --- deploy ----------------------------------------------------------------------------

    def deploy(self, slug: str, version: int, previous: int | None = None) -> None:
        """Publish ``slug`` version ``version`` to the served repository and load it (blocks
        until loaded and warmed, or raises with the server's reason). On failure the pin goes
        back to ``previous`` (which kept serving meanwhile), so a restart serves it again."""
        source = self.settings.repository.version(slug, version).path
        model_dir = self.settings.serving_dir / slug
        model_dir.mkdir(parents=True, exist_ok=True)
        target = model_dir / str(version)
        if not target.exists():
            tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
            shutil.copytree(source, tmp)
            os.rename(tmp, target)
        _write_atomic(model_dir / CONFIG_FILE, {"version_policy": {"specific": [version]}})
        try:
            self._post(f"/v2/repository/models/{slug}/load")
        except (MintError, httpx.TransportError):
            if previous is None:
                self.undeploy(slug)
            else:
                _write_atomic(model_dir / CONFIG_FILE,
                              {"version_policy": {"specific": [previous]}})
            raise

    def undeploy(self, slug: str) -> None:
        """Unload ``slug`` from the server, then remove it from the served repository. Nothing
        there: nothing to do (the server only ever loads what is in that repository)."""
        if not (self.settings.serving_dir / slug).exists():
            return
        with contextlib.suppress(NotFound):
            self._post(f"/v2/repository/models/{slug}/unload")
        shutil.rmtree(self.settings.serving_dir / slug, ignore_errors=True)

    def status(self, slug: str) -> dict[str, Any]:
        """The server's view: per-version state (LOADING / WARMING / READY / ...) and ready."""
        try:
            index = self._post("/v2/repository/index", {})
            ready = self.client.get(f"{self.url}/v2/models/{slug}/ready").status_code == 200
        except (httpx.TransportError, MintError) as exc:
            return {"ready": False, "versions": [], "error": str(exc)}
        versions = [e for e in index if isinstance(e, dict) and e.get("name") == slug]
        return {"ready": ready, "versions": versions}

    # --- inference -------------------------------------------------------------------------

    def _client(self) -> V2Client:
        with self.v2_lock:  # requests run on a thread pool: make one client, not several
            if self.v2 is None:
                self.v2 = V2Client(self.url, timeout=INFER_TIMEOUT_S)
            return self.v2

    def _infer_encoded(self, slug: str, payload: bytes, classification: int | None,
                       parameters: dict[str, Any] | None = None) -> InferResponse:
        v2 = self._client()
        try:
            name = encoded_input(v2.model_metadata(slug))
            if name is None:
                raise InvalidInput(f"model {slug!r} takes no encoded input (BYTES) to try")
            request = bytes_request(name, [payload], classification=classification)
            request.parameters.update(parameters or {})
            return v2.infer(slug, request)
        except InvalidInput as exc:  # the payload: not an image, sound or UTF-8 text
            raise InvalidInput(f"try it: {exc}") from None
        except MintError as exc:  # same class (HTTP status), said where it comes from
            raise type(exc)(f"model server: {exc}") from None

    def predict(self, slug: str, payload: bytes, top_k: int = 5) -> list[dict[str, Any]]:
        reply = self._infer_encoded(slug, payload, top_k)
        return [{"label": label, "index": index, "probability": score}
                for score, index, label in classifications(reply)[0]]

    def detect(self, slug: str, payload: bytes, labels: list[str],
               score_threshold: float | None = None) -> list[dict[str, Any]]:
        """A detector's boxes for one encoded image, in its pixels, best first (those scoring
        at least ``score_threshold``; None: the version's own threshold)."""
        wanted = {} if score_threshold is None else {SCORE_THRESHOLD: score_threshold}
        reply = self._infer_encoded(slug, payload, None, wanted)
        try:
            count = int(output_array(reply, COUNT).reshape(-1)[0])
            boxes = output_array(reply, BOXES)[0][:count]
            scores = output_array(reply, SCORES)[0][:count]
            classes = output_array(reply, CLASSES)[0][:count]
        except (MintError, IndexError, ValueError) as exc:
            raise MintError(f"model server: {slug!r} answered no detections ({exc})") from None
        found = []
        for box, score, index in zip(boxes.tolist(), scores.tolist(), classes.tolist(),
                                     strict=True):
            if index < 0:  # padding
                continue
            label = labels[index] if index < len(labels) else str(index)
            found.append({"label": label, "index": index, "score": score,
                          "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3]})
        return sorted(found, key=lambda d: -d["score"])

    def _post(self, path: str, body: Any = None) -> Any:
        try:
            reply = self.client.post(self.url + path, json={} if body is None else body)
        except httpx.TransportError as exc:
            raise ModelNotReady(f"model server at {self.url} did not answer: {exc}") from None
        return self._check(reply)

    @staticmethod
    def _check(reply: httpx.Response) -> Any:
        if reply.status_code == 200:
            return reply.json() if reply.content else {}
        try:
            message = reply.json().get("error", reply.text)
        except ValueError:
            message = reply.text
        error = {404: NotFound, 503: ModelNotReady}.get(reply.status_code, InvalidInput)
        raise error(f"model server: {message}")


def _write_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
