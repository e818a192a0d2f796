"""``mint convert``: an annotated image folder from one detection format to another (Pascal
VOC, COCO, YOLO), images copied (hard-linked where possible) and every problem met reported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ._cli_common import fail
from .errors import MintError

SHOWN_FINDINGS = 50  # the rest are counted, not listed


def convert(
    src: Annotated[Path, typer.Argument(help="Annotated image folder to read.")],
    dst: Annotated[Path, typer.Argument(help="New (or empty) folder to write.")],
    to: Annotated[str, typer.Option("--to", help="Format to write: voc, coco or yolo.")],
    source_format: Annotated[str | None, typer.Option(
        "--from", help="Format of SRC (voc, coco, yolo); detected from its layout if left out.")]
    = None,
) -> None:
    """Convert object-detection annotations between VOC, COCO and YOLO."""
    from ._data.annotations import read_annotations, write_annotations

    try:
        aset = read_annotations(src, source_format)
        written = write_annotations(aset, dst, to)
    except MintError as exc:
        fail(exc)
        return
    console = Console(highlight=False, soft_wrap=True)
    boxes = sum(len(image.boxes) for image in aset.images)
    console.print(f"converted {_count(len(aset.images), 'image')} ({_count(boxes, 'box')}, "
                  f"{_count(len(aset.classes), 'class')}) from {aset.format.upper()} "
                  f"{escape(str(aset.root))} to {to.upper()} {escape(str(written))}; "
                  f"{_count(len(aset.findings), 'finding')}")
    for finding in aset.findings[:SHOWN_FINDINGS]:
        console.print(f"[yellow]finding:[/] {escape(finding)}")
    if len(aset.findings) > SHOWN_FINDINGS:
        console.print(f"[yellow]... and {len(aset.findings) - SHOWN_FINDINGS} more[/]")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 'es' if noun.endswith(('s', 'x')) else 's'}"
