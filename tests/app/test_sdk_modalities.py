"""The offline SDK for sound and text models: a tiny model of each kind is trained by the search
(cheapest candidate, few samples), its SDK zip is built and unpacked, and the SDK's predict.py —
run isolated (``-I``, ``PYTHONPATH`` = the SDK folder only) and proven not to import modelmint
or torch — must give the served model's top-1 for every sample."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from modality_server import train
from modelmint._app.sdk import build_sdk, vendored_source
from modelmint._data.audio import AudioSpec, preprocess_audio_batch
from modelmint._data.text import TextEncoder, TextSpec
from modelmint._repository import ONNX_FILE, ModelMetadata

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
# After the predictions: fail if the SDK pulled in modelmint or torch.
IMPORT_CHECK = ("import sys; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
                "('modelmint', 'torch')); print(json.dumps({'imported': bad}))")


def _unpack(version_dir: Path, tmp: Path) -> Path:
    name, data = build_sdk(version_dir)
    zip_path = tmp / name
    zip_path.write_bytes(data)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp / "sdk")
    return next((tmp / "sdk").iterdir())


def _run_sdk(sdk_dir: Path, args: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """predict.py in a fresh interpreter that can see only the SDK folder (and site-packages)."""
    code = (f"import json, runpy, sys; sys.argv = ['predict.py', *{args!r}]; "
            f"runpy.run_path('predict.py', run_name='__main__'); {IMPORT_CHECK}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(sdk_dir)
    # -I ignores PYTHONPATH, so the SDK folder goes on sys.path by hand; the cwd is not on it.
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                          f"{str(sdk_dir)!r}); {code}"], cwd=sdk_dir, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    return lines[:-1], lines[-1]["imported"]


def _served_top1(version_dir: Path, inputs: list[bytes] | list[str]) -> list[str]:
    """The server's own preprocessing (modelmint._data) and the version's ONNX model."""
    meta = ModelMetadata.load(version_dir)
    spec = meta.preprocessing
    if isinstance(spec, AudioSpec):
        batch = preprocess_audio_batch([i for i in inputs if isinstance(i, bytes)], spec)
    else:
        assert isinstance(spec, TextSpec)
        batch = TextEncoder(spec).encode_batch([i for i in inputs if isinstance(i, str)])
    assert len(batch) == len(inputs)
    session = ort.InferenceSession(str(version_dir / ONNX_FILE),
                                   providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"input": batch})[0]
    return [meta.labels[int(i)] for i in np.argmax(probs, axis=1)]


def test_sound_sdk_matches_the_served_model(tmp_path: Path) -> None:
    data = tmp_path / "digits"
    for digit in ("0", "1", "2"):
        (data / digit).mkdir(parents=True)
        for wav in sorted((SHARED / "spoken_digits" / digit).glob("*.wav"))[:8]:
            (data / digit / wav.name).symlink_to(wav)
    result = train(data, tmp_path, ["logmel-stats+lr"], budget=60, max_trials=1)
    version_dir = Path(result["version_dir"])
    sdk_dir = _unpack(version_dir, tmp_path)
    assert "soundfile" in (sdk_dir / "requirements.txt").read_text()
    assert "pillow" not in (sdk_dir / "requirements.txt").read_text()
    wavs = sorted(data.glob("*/*.wav"))
    rows, imported = _run_sdk(sdk_dir, [str(w) for w in wavs])
    assert imported == []
    assert [r["file"] for r in rows] == [str(w) for w in wavs]
    served = _served_top1(version_dir, [w.read_bytes() for w in wavs])
    assert [r["label"] for r in rows] == served
    assert len(set(served)) > 1  # a model that says one label for everything proves nothing


def test_text_sdk_matches_the_served_model(tmp_path: Path) -> None:
    with open(SHARED / "sms_spam" / "sms_spam.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    picked = [r for r in rows if r[0] == "spam"][:25] + [r for r in rows if r[0] == "ham"][:25]
    tsv = tmp_path / "sms.tsv"
    tsv.write_text("label\ttext\n" + "".join(f"{a}\t{b}\n" for a, b in picked), encoding="utf-8")
    result = train(tsv, tmp_path, ["tfidf-word+lr"], budget=60, max_trials=1)
    version_dir = Path(result["version_dir"])
    sdk_dir = _unpack(version_dir, tmp_path)
    texts = [b for _, b in picked]
    (tmp_path / "texts.txt").write_text("\n".join(texts), encoding="utf-8")
    rows_out, imported = _run_sdk(sdk_dir, ["--lines", str(tmp_path / "texts.txt"),
                                            "--text", "WIN a FREE prize now, call 0800"])
    assert imported == []
    assert [r["text"] for r in rows_out] == ["WIN a FREE prize now, call 0800", *texts]
    served = _served_top1(version_dir, [r["text"] for r in rows_out])
    assert [r["label"] for r in rows_out] == served
    assert set(served) == {"spam", "ham"}


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_vendored_module_has_no_modelmint_import(kind: str) -> None:
    source = vendored_source(kind)
    assert "from .errors import " in source and "from .." not in source
    assert "TaskData" not in source and "split_items" not in source
