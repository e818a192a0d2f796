"""Publishing for ``hot_update.py``: a new version as a copy of the first, from a process of
its own that also waits for the server to finish the update (see :class:`Publisher`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _mlserver import MODEL_NAME
from _phases import UnloadWatch


def publish_copy(repo: Path, source: Path) -> int:
    """A new version with the same files, the weights as hard links (the server reads them as
    new files all the same), as MLServer's updates get: copying 9 MB of ``model.safetensors``
    (which serving never reads) made every publish a stall of its own."""
    from modelmint._repository import ModelRepository

    def link_or_copy(src: str, dst: str) -> None:
        weights = src.endswith((".onnx", ".safetensors"))
        (os.link if weights else shutil.copy2)(src, dst)  # small files: copies

    def write(tmp: Path, version: int) -> None:
        shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=link_or_copy)

    return ModelRepository(repo).publish(MODEL_NAME, write).version


class Publisher:
    """Publishes from a process of its own, as a training job would, and waits there until the
    server has unloaded the version it replaced: publishing or reading the server's log from
    this process, whose threads send the requests, made them wait for the GIL (requests sent
    during a 20 ms publish had a p99 of 31 ms)."""

    def __init__(self, repo: Path, source: Path, log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(repo), str(source), str(log)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, serving: int) -> tuple[int, float]:
        """The new version, and when its publish was over (``perf_counter``: one clock for
        every process on Linux)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{serving}\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().split()
        if len(reply) != 2:
            raise RuntimeError(f"the publisher failed: {reply}")
        return int(reply[0]), float(reply[1])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def serve_publishes(repo: Path, source: Path, log: Path) -> None:
    """``python _publish.py REPO SOURCE LOG``: for each version number read, publish a new version,
    wait until the server's log says the one read is unloaded, print ``NEW PUBLISHED_AT``."""
    unloaded = UnloadWatch(log, MODEL_NAME)
    for line in sys.stdin:
        serving = int(line)
        new = publish_copy(repo, source)
        published = time.perf_counter()
        deadline = time.monotonic() + 60
        while serving not in unloaded():
            if time.monotonic() > deadline:
                print("the update did not finish within 60 s", flush=True)
                return
            time.sleep(0.02)
        print(new, published, flush=True)


if __name__ == "__main__":
    serve_publishes(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
