"""``mint optimize`` on the text and sound classifiers ``mint train`` publishes: dynamic and
static INT8 gated on top-1 accuracy over the version's own labelled items, the published version
served by the real server with the source version's answers, and an impossible gate that keeps
FP32 and says why.

The models are the recipes of the text and sound tests (``tfidf-word+lr`` on SMS spam,
``logmel-stats+lr`` on spoken digits) trained by the search on a slice of the same data, so the
whole file stays within a minute."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from typer.testing import CliRunner

from live_server import full_server
from modality_server import train
from modelmint._data.audio import preprocess_audio_batch
from modelmint._data.text import TextEncoder, load_text_data
from modelmint._optimize import optimize
from modelmint._optimize.pipeline import _check_contract, tensor_inputs
from modelmint._optimize.quantize import cpu_features, quant_plan
from modelmint._optimize.select import MIN_AGREEMENT
from modelmint._repository import METADATA_FILE, ONNX_FILE, ModelMetadata
from modelmint.cli import app
from modelmint.errors import DataError, RepositoryError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SMS = SHARED / "sms_spam" / "sms_spam.tsv"
DIGITS = SHARED / "spoken_digits"


@pytest.fixture(scope="module")
def text_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tfidf-word+lr`` (the text tests' model) on 160 ham and 80 spam messages."""
    tmp = tmp_path_factory.mktemp("text")
    header, *rows = SMS.read_text(encoding="utf-8").splitlines()
    ham = [r for r in rows if r.startswith("ham\t")][:160]
    spam = [r for r in rows if r.startswith("spam\t")][:80]
    (tmp / "sms.tsv").write_text("\n".join([header, *ham, *spam]) + "\n", encoding="utf-8")
    return Path(train(tmp / "sms.tsv", tmp, ["tfidf-word+lr"], budget=60)["version_dir"]
                ).parents[1]


@pytest.fixture(scope="module")
def sound_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``logmel-stats+lr`` (the sound tests' model) on 24 clips each of the digits 0-2."""
    tmp = tmp_path_factory.mktemp("sound")
    for digit in "012":
        folder = tmp / "data" / digit
        folder.mkdir(parents=True)
        for wav in sorted((DIGITS / digit).glob("*.wav"))[::12][:24]:
            (folder / wav.name).symlink_to(wav)
    return Path(train(tmp / "data", tmp, ["logmel-stats+lr"], budget=60)["version_dir"]
                ).parents[1]


def _copy(repo: Path, tmp: Path) -> Path:
    """A private copy: each test numbers its own versions."""
    shutil.copytree(repo, tmp / "models")
    return tmp / "models"


@dataclass
class Optimized:
    kind: str
    repo: Path
    out: dict[str, Any]


@pytest.fixture(scope="module", params=["text", "audio"])
def optimized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Optimized:
    kind = request.param
    source = request.getfixturevalue("text_repo" if kind == "text" else "sound_repo")
    repo = _copy(source, tmp_path_factory.mktemp(f"optimize-{kind}"))
    result = CliRunner().invoke(app, ["optimize", str(repo / "m"), "--rounds", "1",
                                      "--iters", "1", "--json"])
    assert result.exit_code == 0, result.output
    return Optimized(kind, repo, json.loads(result.stdout.strip().splitlines()[-1]))


def test_both_int8_methods_are_gated_and_the_fastest_passing_is_published(
        optimized: Optimized) -> None:
    out, report = optimized.out, optimized.out["report"]
    assert (out["source_version"], out["version"]) == (1, 2)
    assert report["task"] == f"{optimized.kind}-classification"
    quant = report["quantization"]
    # A conv-free graph: dynamic INT8 first, static beside it, each through the same gate.
    assert [q["config"]["method"] for q in quant] == ["dynamic", "static"]
    for q in quant:
        assert q["quant_nodes"] > 0 and q["val_accuracy"] is not None and q["reason"]
    assert quant[0]["calibration_images"] == 0 < quant[1]["calibration_images"]
    rows = {row["candidate"]: row for row in report["candidates"]}
    assert {"ort-fp32", *(q["config"]["name"] for q in quant)} <= set(rows)
    chosen = rows[out["chosen"]]
    assert chosen["accuracy"]["passed"] and chosen["publishable"]
    assert any("torch paths skipped" in n for n in report["notes"])
    meta = ModelMetadata.load(Path(out["path"]))
    assert meta.preprocessing.kind == optimized.kind
    assert meta.provenance["optimized_from"] == 1
    assert json.loads((Path(out["path"]) / METADATA_FILE).read_text()
                      )["optimization"]["published"] == out["published"]


def _labelled(meta: ModelMetadata) -> tuple[list[bytes], np.ndarray]:
    """Every recorded item as the bytes a client sends, and as the rows training encoded."""
    root = Path(meta.provenance["data_root"])
    items = [rel for part in ("train", "val") for rel, _ in meta.provenance["split"][part]]
    if meta.preprocessing.kind == "text":
        texts = load_text_data(root).texts
        raw = [texts[rel].encode("utf-8") for rel in items]
        return raw, TextEncoder(meta.preprocessing).encode_batch([texts[rel] for rel in items])
    raw = [(root / rel).read_bytes() for rel in items]
    return raw, preprocess_audio_batch(raw, meta.preprocessing)


def test_the_published_version_serves_the_sources_answers(optimized: Optimized) -> None:
    source = optimized.repo / "m" / "1"
    raw, rows = _labelled(ModelMetadata.load(source))
    session = ort.InferenceSession(str(source / ONNX_FILE), providers=["CPUExecutionProvider"])
    want = session.run(["probabilities"], {"input": rows})[0].argmax(1)
    name = "text" if optimized.kind == "text" else "audio"
    got = []
    with full_server(optimized.repo) as (server, _):
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        for start in range(0, len(raw), 32):
            chunk = raw[start:start + 32]
            tensor = httpclient.InferInput(name, [len(chunk)], "BYTES")
            tensor.set_data_from_numpy(np.array(chunk, dtype=np.object_))
            result = client.infer("m", [tensor], model_version="2")
            got.append(result.as_numpy("probabilities").argmax(1))
    agreement = float((np.concatenate(got) == want).mean())
    if optimized.out["published"] == "ort-fp32":
        assert agreement == 1.0
    else:  # the gate bounds how many answers INT8 changes over these very items
        assert agreement >= MIN_AGREEMENT, agreement


@pytest.mark.parametrize("kind", ["text", "audio"])
def test_an_impossible_gate_keeps_fp32_and_says_why(kind: str, request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    repo = _copy(request.getfixturevalue("text_repo" if kind == "text" else "sound_repo"),
                 tmp_path)
    result = optimize(repo / "m", max_accuracy_drop=-100, rounds=1, iters=1)
    report = result.report
    assert result.chosen == result.published == "ort-fp32" and result.version == 2
    assert {q["config"]["method"] for q in report["quantization"]} == {"dynamic", "static"}
    for q in report["quantization"]:
        assert not q["passed"] and "drops" in q["reason"] and "(> -100)" in q["reason"]
    assert any(n.startswith("INT8 not published") for n in report["notes"])
    assert "rejected by the gate" in report["reason"]
    saved = json.loads((Path(result.path) / METADATA_FILE).read_text())
    assert saved["optimization"]["published"] == "ort-fp32"


def test_a_text_file_whose_rows_changed_is_refused_by_name(text_repo: Path,
                                                           tmp_path: Path) -> None:
    repo = _copy(text_repo, tmp_path)
    meta_file = repo / "m" / "1" / METADATA_FILE
    data = json.loads(meta_file.read_text())
    lines = Path(data["provenance"]["data_root"]).read_text(encoding="utf-8").splitlines()
    swapped = [lines[0], *(("spam" if r.startswith("ham") else "ham") + r[r.index("\t"):]
                           for r in lines[1:])]
    (tmp_path / "edited.tsv").write_text("\n".join(swapped) + "\n", encoding="utf-8")
    data["provenance"]["data_root"] = str(tmp_path / "edited.tsv")
    meta_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"edited\.tsv: .* carry another label"):
        optimize(repo / "m", rounds=1, iters=1)


def _graph(inputs: list[tuple[str, int, list[Any]]], conv: bool) -> onnx.ModelProto:
    x = helper.make_tensor_value_info
    node = (helper.make_node("Conv", [inputs[0][0], "w"], ["logits"]) if conv
            else helper.make_node("MatMul", [inputs[0][0], "w"], ["logits"]))
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 1, 1] if conv else [4, 2],
                                [0.5] * (6 if conv else 8))
    graph = helper.make_graph([node], "g", [x(n, t, s) for n, t, s in inputs],
                              [x("logits", TensorProto.FLOAT, None)], [weight])
    return helper.make_model(graph)


def test_quant_plan_and_the_contract_follow_the_graph(text_repo: Path) -> None:
    features = cpu_features()
    linear = _graph([("input", TensorProto.FLOAT, ["batch", 4])], conv=False)
    conv = _graph([("input", TensorProto.FLOAT, ["batch", 3, 8, 8])], conv=True)
    assert [c.method for c in quant_plan(linear, features)] == ["dynamic", "static"]
    assert [c.method for c in quant_plan(conv, features)] == ["static"]
    inputs = tensor_inputs(ModelMetadata.load(text_repo / "m" / "1"))
    assert inputs == {"input": "FP32"}  # the raw ``text`` BYTES input is decoded before it
    _check_contract(linear, "linear", ("logits",), inputs)
    # Token ids and a mask as INT64 graph inputs are not what the version declares.
    tokens = _graph([("input_ids", TensorProto.INT64, ["batch", 8]),
                     ("attention_mask", TensorProto.INT64, ["batch", 8])], conv=False)
    with pytest.raises(RepositoryError, match="lost the FP32 'input' tensor"):
        _check_contract(tokens, "tokens", ("logits",), inputs)
    both = _graph([("input", TensorProto.FLOAT, ["batch", 4]),
                   ("attention_mask", TensorProto.INT64, ["batch", 8])], conv=False)
    with pytest.raises(RepositoryError, match=r"inputs \['attention_mask'\] the version's"):
        _check_contract(both, "both", ("logits",), inputs)
    fixed = _graph([("input", TensorProto.FLOAT, [1, 4])], conv=False)
    with pytest.raises(RepositoryError, match="batch axis of 'input' is no longer dynamic"):
        _check_contract(fixed, "fixed", ("logits",), inputs)
