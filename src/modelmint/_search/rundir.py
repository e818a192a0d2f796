"""A run directory: ``runs/<model>-<n>/`` with ``run.json`` (what was asked, how far it got),
the split, the study, one folder per trial, and the caches trials share. Everything
``--resume`` needs is here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import DataError, NotFound
from .options import TrainOptions

RUN_FILE = "run.json"
KIND = "train"
# Search runs of the previous release said "search"; their options load unchanged.
RESUMABLE_KINDS = (KIND, "search")


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """The next free ``<name>-<n>`` folder, created (two runs starting at once get two)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    # ASCII numbers only: a folder named "<name>-²" passes isdigit() but not int().
    numbered = re.compile(re.escape(name) + r"-([1-9][0-9]*)")
    matches = (numbered.fullmatch(p.name) for p in runs_dir.iterdir())
    n = 1 + max((int(m.group(1)) for m in matches if m), default=0)
    while True:
        path = runs_dir / f"{name}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def write_run(run_dir: Path, opts: TrainOptions, status: str, **extra: Any) -> None:
    """Replace ``run.json`` atomically: a reader sees the old or the new file, never half."""
    data = {"kind": KIND, "options": opts.to_json(), "status": status, **extra}
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(run_dir / RUN_FILE)


def read_run(run_dir: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads((run_dir / RUN_FILE).read_text())
    except FileNotFoundError as exc:
        raise NotFound(f"{run_dir}: not a run directory (no {RUN_FILE})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{run_dir / RUN_FILE}: not valid JSON ({exc})") from exc
    return loaded


def resumable_options(run_dir: Path) -> TrainOptions:
    """The options of an interrupted run, or a clear refusal saying why it cannot resume."""
    saved = read_run(run_dir)
    if saved.get("kind") not in RESUMABLE_KINDS:
        raise DataError(f"{run_dir}: this run was written by an earlier release's fixed-epoch "
                        "trainer, whose checkpoints this release cannot continue; start a new "
                        "run with the same options")
    if saved.get("status") == "published":
        raise DataError(f"{run_dir}: this run already published version "
                        f"{saved.get('version')}; start a new run instead")
    try:
        return TrainOptions.from_json(saved["options"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{run_dir / RUN_FILE}: field 'options' is missing or malformed "
                        f"({exc})") from exc
