"""Atomic publishing: a reader sees a whole version or none, and versions are never rewritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelmint._repository import METADATA_FILE, ModelRepository
from modelmint.errors import InvalidInput, NotFound, RepositoryError


def fake_version(directory: Path, version: int) -> None:
    (directory / "model.onnx").write_bytes(b"onnx")
    (directory / METADATA_FILE).write_text(json.dumps({"version": version}))


def test_versions_count_up_from_one(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    refs = [repo.publish("m", fake_version) for _ in range(3)]
    assert [r.version for r in refs] == [1, 2, 3]
    assert [r.version for r in repo.versions("m")] == [1, 2, 3]
    assert repo.version("m").version == 3 and repo.version("m", 2).path == tmp_path / "m" / "2"
    assert json.loads((tmp_path / "m" / "3" / METADATA_FILE).read_text())["version"] == 3


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    repo.publish("m", fake_version)

    def broken(directory: Path, version: int) -> None:
        fake_version(directory, version)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        repo.publish("m", broken)
    assert [r.version for r in repo.versions("m")] == [1]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_killed_writer_leaves_no_visible_version(tmp_path: Path) -> None:
    # The process dies mid-write (no cleanup can run): only a hidden temp dir may remain.
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from modelmint._repository import ModelRepository
        def write(d, v):
            (d / "model.onnx").write_bytes(b"half")
            os._exit(9)
        ModelRepository({str(tmp_path)!r}).publish("m", write)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == 9
    repo = ModelRepository(tmp_path)
    assert repo.versions("m") == [] and repo.models() == []
    assert len(repo.stale_temp_dirs()) == 1
    assert repo.publish("m", fake_version).version == 1


def test_collision_takes_the_next_number(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)

    def racing(directory: Path, version: int) -> None:
        fake_version(directory, version)
        # Another publisher wins the race for the same number while we write.
        other = tmp_path / "m" / str(version)
        other.mkdir()
        fake_version(other, version)

    ref = repo.publish("m", racing)
    assert ref.version == 2
    assert json.loads((ref.path / METADATA_FILE).read_text())["version"] == 2
    assert json.loads((tmp_path / "m" / "1" / METADATA_FILE).read_text())["version"] == 1


def test_names_and_lookups_are_checked(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    for bad in ("", "../x", "a b", ".hidden"):
        with pytest.raises(InvalidInput, match="model name"):
            repo.publish(bad, fake_version)
    with pytest.raises(NotFound, match="no versions"):
        repo.version("absent")
    repo.publish("m", fake_version)
    with pytest.raises(NotFound, match="no version 7"):
        repo.version("m", 7)
    assert not any(p.name.startswith(".tmp") for p in os.scandir(tmp_path / "m"))


def test_only_canonical_ascii_numbers_are_versions(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    repo.publish("m", fake_version)
    model = tmp_path / "m"
    (model / "²").mkdir()  # an empty one broke publishing: "²".isdigit() but int("²") fails
    for odd in ("٣", "007", "0", "+4", "4 ", "4\n"):  # each complete, as a copied version is
        (model / odd).mkdir()
        fake_version(model / odd, 3)
    (model / "5").mkdir()  # no modelmint.json
    (model / "6").write_text("a file")
    (model / "notes.txt").write_text("")
    (model / ".DS_Store").write_text("")  # hidden: not reported
    refs, ignored = repo.scan("m")
    assert [r.version for r in refs] == [1] and repo.models() == ["m"]
    reasons = {i.name: i.reason for i in ignored}
    assert sorted(reasons) == sorted(["²", "٣", "007", "0", "+4", "4 ", "4\n", "5", "6",
                                      "notes.txt"])
    assert "not a version folder: version folders are named 1, 2, 3" in reasons["٣"]
    assert "without leading zeros" in reasons["007"]
    assert reasons["5"] == f"'m/5' has no {METADATA_FILE}: not a published version " \
                           "(an incomplete copy?)"
    assert reasons["6"] == "'m/6' is a file, not a version folder"
    # The next number is past every number in use, so "5" and "6" are never overwritten;
    # "007" names no number, so version 7 cannot collide with it.
    assert [repo.publish("m", fake_version).version for _ in range(2)] == [7, 8]
    assert [r.version for r in repo.versions("m")] == [1, 7, 8]


def test_model_folders_and_their_odd_neighbours(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    repo.publish("m", fake_version)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad name").mkdir()
    (tmp_path / "m\n").mkdir()
    (tmp_path / "README").write_text("")
    folders, ignored = repo.model_folders()
    assert folders == ["empty", "m"] and repo.models() == ["m"]
    assert [i.name for i in ignored] == ["README", "bad name", "m\n"]
    assert "is a file, not a model folder" in ignored[0].reason
    with pytest.raises(InvalidInput, match="model name"):
        repo.publish("m\n", fake_version)


def test_a_folder_that_cannot_be_read_is_an_error_with_its_name(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    repo.publish("m", fake_version)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # reading it fails on any user
    with pytest.raises(RepositoryError, match="model folder 'loop' cannot be read"):
        repo.scan("loop")
    assert repo.models() == ["m"]
    assert repo.versions("deleted") == [] and repo.scan("deleted") == ([], [])
