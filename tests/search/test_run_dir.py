"""Run folders are numbered ``<name>-<n>`` by ASCII numbers only."""

from __future__ import annotations

from pathlib import Path

from modelmint._search.rundir import new_run_dir


def test_odd_neighbours_neither_crash_nor_collide(tmp_path: Path) -> None:
    for name in ("bees-1", "bees-²", "bees-٣", "bees-007", "bees-0", "bees-x", "bees-2-9",
                 "bees2-40", "other-30"):
        (tmp_path / name).mkdir()
    assert new_run_dir(tmp_path, "bees").name == "bees-2"
    assert new_run_dir(tmp_path, "bees").name == "bees-3"
    assert new_run_dir(tmp_path, "bees-2").name == "bees-2-10"
    assert new_run_dir(tmp_path / "fresh", "a.b").name == "a.b-1"
