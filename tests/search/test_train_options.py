"""Every ``mint train`` option works on every plan, or the command says why not and exits 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelmint.cli import app


@pytest.fixture(scope="module")
def flagged_images(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path) -> Path:
    """8 train + 4 val images per class, named ``<source>_<n>.jpg`` (two sources per class),
    plus one exact duplicate in train/ants: a warning the data check keeps unless --strict."""
    root = tmp_path_factory.mktemp("flagged")
    for split, n in (("train", 8), ("val", 4)):
        for label in ("ants", "bees"):
            (root / split / label).mkdir(parents=True)
            files = sorted(p for p in (hymenoptera / split / label).iterdir()
                           if p.suffix == ".jpg")[:n]
            for i, f in enumerate(files):
                shutil.copy(f, root / split / label / f"{'xy'[i % 2]}{label}_{i}.jpg")
    shutil.copy(root / "train" / "ants" / "xants_0.jpg", root / "train" / "ants" / "dup.jpg")
    return root


@pytest.fixture(scope="module")
def reject(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path) -> Path:
    folder = tmp_path_factory.mktemp("reject")
    for f in sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[-6:]:
        shutil.copy(f, folder / f.name)
    return folder


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train", *args])
    return result.exit_code, result.output


@pytest.mark.slow
def test_the_fixed_plan_honours_strict_group_by_and_reject_dir(
        flagged_images: Path, reject: Path, tmp_path: Path) -> None:
    code, output = run(str(flagged_images), "--name", "opts", "--epochs", "1", "--strict",
                       "--group-by", r"^(.)", "--reject-dir", str(reject), "--seed", "1",
                       "--repo", str(tmp_path / "models"), "--runs-dir", str(tmp_path / "runs"),
                       "--json")
    assert code == 0, output
    out = json.loads(output.strip().splitlines()[-1])
    assert out["version"] == 1 and out["trials"][0]["kind"] == "fixed"
    # --strict: the duplicate is skipped, not trained on.
    split = json.loads((Path(out["run_dir"]) / "split.json").read_text())
    items = [item for item, _ in split["train"] + split["val"]]
    assert not any(item.endswith("dup.jpg") for item in items)
    assert any("dup.jpg" in f for f in out["skipped_files"])
    # --reject-dir: an "other" class of the six out-of-domain images.
    assert split["labels"] == ["ants", "bees", "other"]
    assert sum(label == 2 for _, label in split["train"] + split["val"]) == 6
    # --group-by: each source prefix on one side of the split only.
    known = [(Path(item).name[0], side) for side in ("train", "val")
             for item, label in split[side] if label < 2]
    assert {g for g, s in known if s == "train"}.isdisjoint({g for g, s in known if s == "val"})
    assert "grouped" in out["split"]
    meta = json.loads((Path(out["version_dir"]) / "modelmint.json").read_text())
    assert meta["labels"] == ["ants", "bees", "other"]
    assert meta["provenance"]["search"]["seed"] == 1
    assert (Path(out["version_dir"]) / "report.html").is_file()


@pytest.mark.parametrize(("extra", "message"), [
    (["--epochs", "2", "--candidates", "mobilenet_v2/*"], "--candidates steer a model search"),
    (["--epochs", "2", "--max-trials", "3"], "--max-trials steer a model search"),
    (["--epochs", "2", "--ray", "127.0.0.1:1"], "--ray steer a model search"),
    (["--worker"], "--worker joins a shared study"),
    (["--epochs", "0"], "--epochs 0: expected 1 or more"),
    (["--budget", "-5"], "--budget -5: expected a positive number"),
    (["--label-column", "label"], "--label-column do not apply to image-classification"),
])
def test_options_that_cannot_apply_are_refused_with_exit_2(
        flagged_images: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    code, output = run(str(flagged_images), "--name", "opts", "--repo", str(tmp_path / "m"),
                       "--runs-dir", str(tmp_path / "r"), *extra)
    assert code == 2, output
    assert message in " ".join(output.split())
    assert not (tmp_path / "m" / "opts").exists()


def test_text_data_refuses_epochs_profile_and_reject_dir(tmp_path: Path) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_text("label\ttext\n" + "".join(f"{'ab'[i % 2]}\tsome text {i}\n"
                                             for i in range(40)))
    common = [str(tsv), "--name", "t", "--repo", str(tmp_path / "m"), "--runs-dir",
              str(tmp_path / "r")]
    for extra, message in ((["--epochs", "3"], "not trained in epochs"),
                           (["--profile"], "--profile does not apply to text-classification"),
                           (["--auto-tune"], "--auto-tune does not apply"),
                           (["--reject-dir", str(tmp_path)], "--reject-dir do not apply")):
        code, output = run(*common, *extra)
        assert code == 2 and message in " ".join(output.split()), output


def test_resume_refuses_options_it_would_ignore(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "x-1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({
        "kind": "train", "status": "interrupted",
        "options": {"data": str(tmp_path), "name": "x", "epochs": 2}}))
    code, output = run("--resume", str(run_dir), "--seed", "4", "--strict")
    assert code == 2 and "--seed, --strict cannot change now" in " ".join(output.split())
    (run_dir / "run.json").write_text(json.dumps({"options": {}, "status": "interrupted"}))
    code, output = run("--resume", str(run_dir))
    assert code == 2 and "earlier release's fixed-epoch trainer" in " ".join(output.split())
