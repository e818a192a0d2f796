"""``optimize`` end to end on a tiny random-weight model: publishes, records, falls back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from modelmint._data.preprocess import ImageSpec
from modelmint._optimize import REPORT_FILE, optimize
from modelmint._repository import METADATA_FILE, ONNX_FILE, ModelMetadata, ModelRepository
from modelmint._search.publish import publish_classifier
from modelmint.errors import InvalidInput

SPEC = ImageSpec(resize=40, crop=32)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.body(x).mean(dim=(2, 3)))
        return logits


@pytest.fixture()
def tiny_repo(tmp_path: Path, hymenoptera: Path) -> Path:
    torch.manual_seed(0)
    split: dict[str, list[list[str]]] = {"train": [], "val": []}
    for part in split:
        for label in ("ants", "bees"):
            for f in sorted((hymenoptera / part / label).glob("*.jpg"))[:6]:
                split[part].append([str(f.relative_to(hymenoptera)), label])
    meta = ModelMetadata(name="tiny", labels=["ants", "bees"], architecture="tiny-test",
                         preprocessing=SPEC, metrics={"val_accuracy": 0.5},
                         provenance={"data_root": str(hymenoptera), "split": split})
    repo = tmp_path / "models"
    publish_classifier(ModelRepository(repo), Tiny().eval(), meta)
    return repo


def test_impossible_gate_falls_back_to_fp32_and_says_why(tiny_repo: Path) -> None:
    result = optimize(tiny_repo / "tiny", max_accuracy_drop=-1.0, rounds=1, iters=1)
    report = result.report
    assert result.version == 2 and result.source_version == 1
    assert result.chosen == result.published == "ort-fp32"
    assert report["quantization"], "INT8 was not even tried"
    assert all(not q["passed"] and "drops" in q["reason"] for q in report["quantization"])
    assert [q["config"]["name"].count("-") for q in report["quantization"]] == sorted(
        q["config"]["name"].count("-") for q in report["quantization"])  # widening fallback
    assert any("INT8 not published" in n for n in report["notes"])
    assert any("torch paths skipped" in n for n in report["notes"])  # unknown architecture
    assert any("FP16 skipped" in n for n in report["notes"])
    assert "rejected by the gate" in report["reason"]

    version = Path(result.path)
    saved = json.loads((version / REPORT_FILE).read_text())
    assert saved["chosen"] == "ort-fp32" and saved["version"] == 2
    meta = json.loads((version / METADATA_FILE).read_text())
    assert meta["version"] == 2 and meta["optimization"]["chosen"] == "ort-fp32"
    assert meta["provenance"]["optimized_from"] == 1
    assert ModelMetadata.from_json(meta).labels == ["ants", "bees"]  # same schema
    assert (version / ONNX_FILE).is_file()
    for p in report["passes"]:
        assert p["nodes_after"] <= p["nodes_before"] or p["pass"] == "ort_basic"
    for row in report["candidates"]:
        assert set(row["latency"]) == {"b1", "b8"}


def test_version_dir_is_accepted_and_target_checked(tiny_repo: Path) -> None:
    with pytest.raises(InvalidInput, match="only 'cpu'"):
        optimize(tiny_repo / "tiny" / "1", target="gpu")


def test_reoptimizing_starts_from_the_fp32_source(tiny_repo: Path) -> None:
    first = optimize(tiny_repo / "tiny", rounds=1, iters=1)
    again = optimize(tiny_repo / "tiny", rounds=1, iters=1)
    assert (first.source_version, again.source_version, again.version) == (1, 1, 3)
    assert any("is itself optimized" in n for n in again.report["notes"])
