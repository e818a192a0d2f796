"""Memory under hostile inputs: a budget checked from the header before decoding, decodes that
wait their turn in a small fixed pool, and memory given back afterwards. Measured on the real
server with its worker processes, as deployed."""

from __future__ import annotations

import base64
import gc
import io
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from modelmint._data.audio import AudioSpec, decode_audio
from modelmint._data.audio import decode_bytes as audio_bytes
from modelmint._data.preprocess import ImageSpec, decode_bytes
from modelmint._serve import DataPlane
from modelmint._serve.decoding import DecodeBudget, release_free_memory
from modelmint._serve.server import ModelServer
from modelmint._settings import DEFAULT_DECODE_MEMORY, DEFAULT_DECODE_THREADS, MIB
from modelmint.errors import AudioDecodeError

SIDE = 7990  # 63.8 Mpx: just under the 64-Mpx pixel limit
GREY16 = 30000  # round(30000 / 257) = 117 in 8 bits
COLOUR = (200, 100, 50, 128)

StartServer = Callable[..., AbstractContextManager[tuple[ModelServer, DataPlane]]]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def server_pids() -> list[int]:
    """This process (the server's front end, which decodes) and its descendants: the fork
    server and the workers it forked."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    pids = [os.getpid()]
    for pid in pids:  # grows as it goes: breadth first
        pids.extend(child for child, parent in parents.items() if parent == pid)
    return pids


class PeakSampler(threading.Thread):
    """The largest total RSS of ``pids``, sampled every 10 ms until stopped."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, sum(rss(pid) for pid in self.pids))
            time.sleep(0.01)

    def __enter__(self) -> PeakSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def infer(url: str, blob: bytes) -> httpx.Response:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(blob).decode()]}]}
    return httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=600)


def probabilities(response: httpx.Response) -> np.ndarray:
    output = next(o for o in response.json()["outputs"] if o["name"] == "probabilities")
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def settled_rss(pids: list[int]) -> int:
    time.sleep(0.5)
    return min(sum(rss(pid) for pid in pids) for _ in range(5))


@pytest.fixture(scope="module")
def hostile_images() -> dict[str, bytes]:
    return {
        # The 142 KB 16-bit PNG that used to cost 1.7 GB: decoded in the narrowest dtype now.
        "grey16": png(Image.new("I;16", (SIDE, SIDE), GREY16)),
        # RGBA must be composited and converted: the largest decode the default budget admits.
        "rgba": png(Image.new("RGBA", (SIDE, SIDE), COLOUR)),
        # 60,000 pixels, but a 256 x 15,360,000 picture once resized: refused from its header.
        "tall": png(Image.new("L", (1, 60000))),
    }


def test_worst_case_images_at_once_stay_within_a_gigabyte_of_idle(
        repo_root: Path, start_full_server: StartServer, hostile_images: dict[str, bytes],
        reference_probs: Callable[[list[bytes]], np.ndarray]) -> None:
    images = hostile_images
    with Image.open(io.BytesIO(images["rgba"])) as img:
        need = decode_bytes(img, ImageSpec())
    assert 0.9 * DEFAULT_DECODE_MEMORY < need <= DEFAULT_DECODE_MEMORY  # just under the budget
    # Constant pictures stay constant through resize and crop: small ones are the reference.
    expected = {"grey16": reference_probs([png(Image.new("L", (64, 64), 117))]),
                "rgba": reference_probs([png(Image.new("RGBA", (64, 64), COLOUR))])}
    sent = ["grey16"] * 4 + ["rgba", "tall"]
    earlier = set(threading.enumerate())  # other servers of this test session
    with start_full_server(repo_root, isolation="process") as (server, _):
        assert infer(server.url, png(Image.new("RGB", (300, 200)))).status_code == 200  # warm
        pids = server_pids()
        assert len(pids) >= 3, "expected the fork server and the version's worker beside the " \
            "front end"
        gc.collect()
        release_free_memory()  # the baseline is what is in use, not what glibc kept
        idle = settled_rss(pids)
        with PeakSampler(pids) as sampler, ThreadPoolExecutor(len(sent)) as clients:
            responses = list(clients.map(lambda name: infer(server.url, images[name]), sent))
        after = settled_rss(pids)  # the server gives memory back by itself
        decoders = [t for t in threading.enumerate()
                    if t.name.startswith("modelmint-decode") and t not in earlier]
    print(f"\nidle {idle / MIB:.0f} MiB, peak {sampler.peak / MIB:.0f} MiB "
          f"(+{(sampler.peak - idle) / MIB:.0f} MiB), after {after / MIB:.0f} MiB")
    for name, response in zip(sent, responses, strict=True):
        if name == "tall":
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert "image[0]" in error and "1x60000" in error and "512 MiB" in error, error
        else:  # within the budget: answered, and correctly
            assert response.status_code == 200, (name, response.text)
            np.testing.assert_allclose(probabilities(response), expected[name], atol=1e-5)
    assert sampler.peak - idle <= 1_000_000_000
    assert after - idle <= 128 * MIB, "memory of the burst was not given back"
    assert len(decoders) <= DEFAULT_DECODE_THREADS


def test_budget_serves_waiters_in_arrival_order() -> None:
    budget = DecodeBudget(100)
    order: list[str] = []
    big_waiting = threading.Event()

    def take(name: str, nbytes: int) -> None:
        with budget.reserve(nbytes):
            order.append(name)

    with budget.reserve(60):
        big = threading.Thread(target=lambda: (big_waiting.set(), take("big", 100)))
        big.start()
        big_waiting.wait()
        time.sleep(0.1)  # the big one is queued first
        small = threading.Thread(target=take, args=("small", 10))
        small.start()
        time.sleep(0.1)
        assert order == [] and budget.used == 60  # the small one fits, but waits its turn
    big.join(5)
    small.join(5)
    assert order == ["big", "small"] and budget.used == 0


def test_budget_bounds_the_memory_of_concurrent_holders() -> None:
    budget = DecodeBudget(100)
    highest = [0]
    lock = threading.Lock()

    def hold(nbytes: int) -> None:
        with budget.reserve(nbytes):
            with lock:
                highest[0] = max(highest[0], budget.used)
            time.sleep(0.005)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hold, [30, 45, 60, 25, 70, 40] * 10))
    assert 60 <= highest[0] <= 100 and budget.used == 0


def flac(rate: int, channels: int, seconds: int) -> bytes:
    """A constant (so highly compressible) FLAC: few bytes, many samples."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=channels, format="FLAC") as f:
        block = np.full((rate, channels), 0.25, np.float32)
        for _ in range(seconds):
            f.write(block)
    return buf.getvalue()


def test_sound_budget_counts_frames_and_channels_before_decoding() -> None:
    spec = AudioSpec()
    blob = flac(192_000, 8, 20)  # 3.84 M frames of 8 channels, in a few kB
    assert len(blob) < 1 * MIB
    need = audio_bytes(3_840_000, 8, 192_000, spec)
    with pytest.raises(AudioDecodeError, match=r"clip\.flac: decoding 3840000 frames of 8 "
                       r"channel\(s\) at 192000 Hz needs about \d+ MiB, over .* budget of 16 MiB"):
        decode_audio(blob, spec, name="clip.flac", budget=DecodeBudget(16 * MIB))
    wave = decode_audio(blob, spec, budget=DecodeBudget(need))  # exactly enough: accepted
    assert wave.shape == (20 * spec.sample_rate,)
    np.testing.assert_allclose(wave[1000:-1000], 0.25, atol=1e-3)
