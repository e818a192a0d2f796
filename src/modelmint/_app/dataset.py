"""A project's data as the folder layout `mint train` and the data check read.

Files are stored once (``projects/<id>/files/<item id><suffix>``); a *snapshot* hard-links the
labeled ones into ``train|val/<label>/`` (or ``<label>/`` when nothing came with a split, so
`mint train` makes its seeded 80/20 split). A training job gets its own snapshot, so relabeling
while it runs cannot change what it trains on.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import DataError
from .db import Item, Project
from .detection import (
    DETECTION,
    build_detection_snapshot,
    detection_check,
    detection_counts,
    images_dir,
)
from .settings import AppSettings


def project_dir(settings: AppSettings, project_id: int) -> Path:
    return settings.projects_dir / str(project_id)


def files_dir(settings: AppSettings, project_id: int) -> Path:
    path = project_dir(settings, project_id) / "files"
    path.mkdir(parents=True, exist_ok=True)
    return path


def item_path(settings: AppSettings, project: Project, item: Item) -> Path:
    """Where the item's file is stored (a detection project keeps its images in VOC layout)."""
    folder = (images_dir(settings, project.id) if project.kind == DETECTION
              else files_dir(settings, project.id))
    return folder / item.stored_name


def item_counts(session: Session, project: Project) -> dict[str, int]:
    """Items per label; a detection project's per state (labelled / unlabeled)."""
    if project.kind == DETECTION:
        return detection_counts(session, project.id)
    return label_counts(session, project.id)


def label_counts(session: Session, project_id: int) -> dict[str, int]:
    rows = session.execute(select(Item.label, func.count()).where(Item.project_id == project_id)
                           .group_by(Item.label)).all()
    return {("unlabeled" if label is None else label): n for label, n in rows}


TEXT_TABLE = "data.tsv"


def training_input(project: Project, snapshot: Path) -> Path:
    """What `mint train` reads: the folder, or for text the one TSV file in it."""
    return snapshot / TEXT_TABLE if project.task == "text" else snapshot


def build_snapshot(session: Session, settings: AppSettings, project: Project,
                   dest: Path) -> dict[str, int]:
    """Hard-link every labeled item into ``dest`` (text: write one ``label<TAB>text`` TSV);
    returns per-label counts. A detection project: its labelled images in VOC layout."""
    if project.kind == DETECTION:
        return build_detection_snapshot(session, settings, project, dest)
    items = session.scalars(select(Item).where(Item.project_id == project.id,
                                               Item.label.is_not(None))).all()
    labels = sorted({i.label for i in items if i.label})
    if len(labels) < 2:
        raise DataError(f"project {project.name!r}: training needs at least 2 labels with "
                        f"items; it has {labels or 'none'}")
    with_split = any(i.split for i in items)
    source = files_dir(settings, project.id)
    counts: dict[str, int] = {}
    if project.task == "text":
        dest.mkdir(parents=True, exist_ok=True)
        with (dest / TEXT_TABLE).open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t")
            writer.writerow(["label", "text"])
            for item in items:
                text = (source / item.stored_name).read_text(encoding="utf-8", errors="replace")
                writer.writerow([item.label, " ".join(text.split())])
                counts[str(item.label)] = counts.get(str(item.label), 0) + 1
        return counts
    for item in items:
        assert item.label is not None
        folder = dest / (item.split or "train") / item.label if with_split else dest / item.label
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / item.stored_name, folder / item.stored_name)
        except OSError:  # another file system: copy instead
            shutil.copyfile(source / item.stored_name, folder / item.stored_name)
        counts[item.label] = counts.get(item.label, 0) + 1
    return counts


def data_check(session: Session, settings: AppSettings, project: Project) -> dict[str, Any]:
    """The data check (as in ``mint check``) on the current labels, cached per data revision."""
    cache = project_dir(settings, project.id) / f"check-{project.data_revision}.json"
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    work = project_dir(settings, project.id) / f"check-{project.data_revision}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    try:
        if project.kind == DETECTION:
            findings = detection_check(session, settings, project, work)
        elif project.task == "image":
            from .._data import check_dataset, discover  # imports Pillow/NumPy only when used

            build_snapshot(session, settings, project, work)
            report = check_dataset(discover(work)).to_json()
            report["root"] = ""
            findings = {"counts": report["counts"], "issues": report["issues"],
                        "warnings": report["warnings"], "split": report["split"]}
        else:
            build_snapshot(session, settings, project, work)
            findings = {"counts": {}, "issues": [], "warnings": [
                f"the data check for {project.task} data runs when training starts"], "split": ""}
    except DataError as exc:
        findings = {"counts": {}, "issues": [], "warnings": [exc.message], "split": ""}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in cache.parent.glob("check-*.json"):
        old.unlink(missing_ok=True)
    cache.write_text(json.dumps(findings))
    return findings
