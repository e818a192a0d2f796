"""Object detection's sections of ``report.html``: mAP, per-class AP, precision-recall curves,
and the validation images with their boxes drawn, worst misses and false positives first.

The images are the evaluation's embedded JPEG thumbnails and the boxes SVG rectangles over
them, so the page stays self-contained (nothing fetched, no script)."""

from __future__ import annotations

from typing import Any

from ..html import curves_svg, esc, table

TRUTH = "#2ca02c"  # ground truth found by a detection
HIT = "#1f77b4"  # a detection that found its box
FALSE_POSITIVE = "#d62728"
MISS_DASH = "5,3"  # a ground-truth box no confident detection found


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rect(box: list[float], scale: float, colour: str, text: str, dashed: bool = False,
          below: bool = False) -> str:
    x1, y1, x2, y2 = (v * scale for v in box)
    dash = f' stroke-dasharray="{MISS_DASH}"' if dashed else ""
    ty = y2 + 10 if below else max(9.0, y1 - 2)
    return (f'<rect x="{x1:.1f}" y="{y1:.1f}" width="{max(x2 - x1, 1):.1f}" '
            f'height="{max(y2 - y1, 1):.1f}" fill="none" stroke="{colour}" stroke-width="2"'
            f'{dash}><title>{esc(text)}</title></rect>'
            f'<text x="{x1 + 1:.1f}" y="{ty:.1f}" font-size="9" fill="{colour}">'
            f'{esc(text)}</text>')


def image_svg(image: dict[str, Any]) -> str:
    """One validation image with its ground truth (green; dashed: missed), the detections that
    found a box (blue) and the false positives (red), or "" without a thumbnail."""
    thumb = image.get("thumbnail")
    if not thumb:
        return ""
    scale = float(thumb["scale"])
    width, height = thumb["width"], thumb["height"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}"><title>{esc(image["file"])}</title>',
             f'<image width="{width}" height="{height}" '
             f'href="data:image/jpeg;base64,{thumb["jpeg_base64"]}"/>']
    for truth in image["ground_truth"]:
        lost = not truth["found"]
        parts.append(_rect(truth["box"], scale, TRUTH,
                           f"{truth['label']} (missed)" if lost else truth["label"],
                           dashed=lost, below=True))
    for hit in image["true_positives"]:
        parts.append(_rect(hit["box"], scale, HIT, f"{hit['label']} {hit['score']:.2f}"))
    for fp in image["false_positives"]:
        parts.append(_rect(fp["box"], scale, FALSE_POSITIVE, f"{fp['label']} {fp['score']:.2f}"))
    parts.append("</svg>")
    return "".join(parts)


def _drawn(ev: dict[str, Any]) -> str:
    drawn = [i for i in ev["images"] if i.get("thumbnail")]
    if not drawn:
        return ""
    out = [f"<h2>Predictions on validation images ({len(drawn)} of {ev['samples']}, worst "
           "misses and false positives first)</h2>",
           f"<p>Detections scoring at least {ev['confident_score']:g}: "
           f"<span style='color:{TRUTH}'>ground truth</span> (dashed: missed), "
           f"<span style='color:{HIT}'>detections that found a box</span> (IoU ≥ "
           f"{ev['match_iou']:g}), <span style='color:{FALSE_POSITIVE}'>false positives"
           "</span>.</p>"]
    for image in drawn:
        out.append(f"<figure style='display:inline-block;margin:4px'>{image_svg(image)}"
                   f"<figcaption>{esc(image['file'])}: {len(image['misses'])} missed, "
                   f"{len(image['false_positives'])} false positive</figcaption></figure>")
    return "\n".join(out)


def report_html(report: dict[str, Any]) -> str:
    ev = report["evaluation"]
    out = [f"<h2>Mean average precision</h2><p>{ev['samples']} validation images, "
           f"{ev['boxes']} boxes. COCO's evaluation: AP averaged over the classes that have "
           "boxes.</p>",
           table(["mAP@[.5:.95]", "mAP@.5", "mAP@.75"],
                 [[f"{ev['map50_95']:.3f}", f"{ev['map50']:.3f}", f"{ev['map75']:.3f}"]]),
           "<h2>Per class</h2>" + table(
               ["class", "AP@.5", "AP@[.5:.95]", "boxes", "detections"],
               [[c, _ap(m["ap50"]), _ap(m["ap50_95"]), m["boxes"], m["detections"]]
                for c, m in ev["per_class"].items()]),
           f"<p>{ev['misses']} boxes missed and {ev['false_positives']} false positives at "
           f"score ≥ {ev['confident_score']:g}, IoU ≥ {ev['match_iou']:g}.</p>",
           "<h2>Precision-recall per class (IoU .5)</h2>"
           + curves_svg(ev["pr_curves"], "recall", "precision", "average_precision"),
           _drawn(ev)]
    return "\n".join(part for part in out if part)
