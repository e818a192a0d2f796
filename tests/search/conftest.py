"""A tiny image set (8 train + 4 val per class) for the search tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path) -> Path:
    root = tmp_path_factory.mktemp("tiny-images")
    for split, n in (("train", 8), ("val", 4)):
        for label in ("ants", "bees"):
            (root / split / label).mkdir(parents=True)
            files = sorted(p for p in (hymenoptera / split / label).iterdir()
                           if p.suffix == ".jpg")
            for f in files[:n]:
                (root / split / label / f.name).symlink_to(f)
    return root
