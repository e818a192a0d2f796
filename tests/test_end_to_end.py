"""End to end: trained on the sample set, served by `mint serve`, classified by tritonclient."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from modelmint._data.preprocess import preprocess
from modelmint._demo import free_port, start_server
from modelmint._search.run import TrainResult


@pytest.fixture(scope="module")
def server(trained_repo: Path) -> Iterator[str]:
    port = free_port()
    proc = start_server(trained_repo, port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def val_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "val").glob("*/*") if p.is_file())


def classify(client: triton.InferenceServerClient, inp: triton.InferInput) -> list[str]:
    out = triton.InferRequestedOutput("probabilities", class_count=1)
    result = client.infer("bees", [inp], outputs=[out])
    return [row[0].decode().split(":", 2)[2] for row in result.as_numpy("probabilities")]


def test_val_images_through_both_inputs(server: str, hymenoptera: Path,
                                        trained: TrainResult) -> None:
    client = triton.InferenceServerClient(server)
    assert client.is_server_ready() and client.is_model_ready("bees")
    meta = client.get_model_metadata("bees")
    assert {i["name"] for i in meta["inputs"]} == {"input", "image"}
    files = val_files(hymenoptera)
    truth = [f.parent.name for f in files]
    by_image, by_input = [], []
    for i in range(0, len(files), 16):
        chunk = files[i:i + 16]
        blobs = np.array([f.read_bytes() for f in chunk], dtype=np.object_)
        image = triton.InferInput("image", [len(chunk)], "BYTES")
        image.set_data_from_numpy(blobs, binary_data=True)
        by_image += classify(client, image)
        tensor = np.stack([preprocess(f) for f in chunk])
        inp = triton.InferInput("input", list(tensor.shape), "FP32")
        inp.set_data_from_numpy(tensor, binary_data=True)
        by_input += classify(client, inp)
    acc_image = np.mean([a == b for a, b in zip(by_image, truth, strict=True)])
    acc_input = np.mean([a == b for a, b in zip(by_input, truth, strict=True)])
    assert acc_image >= 0.90 and acc_input >= 0.90
    assert by_image == by_input  # one preprocessing implementation on both paths
    assert acc_image == pytest.approx(trained.val_accuracy, abs=1e-9)


def test_mint_predict_over_http_and_repo(server: str, trained_repo: Path,
                                         hymenoptera: Path) -> None:
    folder = hymenoptera / "val" / "bees"
    outs = {}
    for how in (["--url", f"http://{server}"], ["--repo", str(trained_repo)]):
        proc = subprocess.run([sys.executable, "-m", "modelmint.cli", "predict", str(folder),
                               "--model", "bees", "--json", *how],
                              capture_output=True, text=True, check=True)
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(rows) == len(list(folder.iterdir()))
        assert {"file", "label", "score", "top_k"} <= rows[0].keys()
        outs[how[0]] = [(r["file"], r["label"]) for r in rows]
    assert outs["--url"] == outs["--repo"]
    assert np.mean([label == "bees" for _, label in outs["--url"]]) >= 0.9


def test_mint_models_lists_the_version(trained_repo: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "modelmint.cli", "models", str(trained_repo),
                           "--json"], capture_output=True, text=True, check=True)
    rows = json.loads(proc.stdout)
    assert [(r["model"], r["version"]) for r in rows] == [("bees", 1)]
    assert rows[0]["val_accuracy"] >= 0.9
