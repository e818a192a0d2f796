"""The detector's feature cache: the frozen prefix runs once per image view, and its stride-8 and
stride-16 features (FP16) are kept in memory and on disk in the run directory, so a trial only
pays for the tail, the FPN and the head.

View 0 of an image is exactly what serving sees (the decoded upright picture, letterboxed); view
1 is its mirror; later views are box-aware random zoom-out / IoU crops (``transforms.v2`` on
``BoundingBoxes``, sanitised) of the mirrored or plain picture. Each (backbone, input size, view)
is one safetensors file, so a trial asking for more views than an earlier one extends the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..._data.dataset import TaskData
from ..._data.detection import LetterboxSpec, letterbox_geometry, letterbox_picture
from ..._data.preprocess import open_image, to_tensor
from ..._train import tensorfile
from ..._train.cache import prefix_engine
from .backbones import DetectionBackbone
from .model import Detector, Prefix

CACHE_VERSION = 2  # 2: the prefix runs in ONNX Runtime (values within 1e-5 of eager PyTorch's)
BATCH = 16
MAX_VIEWS = 4


def letterbox_spec(backbone: DetectionBackbone, size: int) -> LetterboxSpec:
    return LetterboxSpec(resize=size, crop=size, mean=backbone.mean, std=backbone.std)


class PrefixEngine:
    """The frozen prefix as classification's cache runs it (:func:`prefix_engine`: ONNX Runtime,
    eager PyTorch if the export fails): 0.11-0.18 s for 8 images at 320 px on this 2-core CPU
    against 0.63-0.77 s in eager PyTorch. Exported on first use (~0.5 s), so a trial whose
    views are all cached exports nothing."""

    def __init__(self, prefix: Prefix, size: int) -> None:
        self.prefix, self.size = prefix, size
        self._engine: nn.Module | None = None

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._engine is None:
            with torch.inference_mode(False):  # the export traces the module
                self._engine = prefix_engine(self.prefix, self.size)
        c3, c4 = self._engine(x)
        return c3, c4


@dataclass
class ViewFeatures:
    """The prefix features of one view of a list of images, with their boxes in tensor pixels."""

    c3: Tensor  # [n, C3, S/8, S/8] FP16
    c4: Tensor  # [n, C4, S/16, S/16] FP16
    files: list[str]
    boxes: list[list[list[float]]]
    labels: list[list[int]]
    mid: Tensor | None = None  # a trial's frozen tail blocks applied to c4 (FP16), when any

    def with_frozen_tail(self, model: Detector) -> ViewFeatures:
        """These features plus the output of ``model``'s frozen tail blocks, computed once: an
        epoch then runs only the blocks it trains."""
        if not model.frozen_blocks:
            return self
        with torch.inference_mode():
            mid = torch.cat([model.frozen_tail(self.c4[s:s + 64].float()).half()
                             for s in range(0, len(self.files), 64)])
        return replace(self, mid=mid)

    def batch(self, rows: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        return (self.c3[rows].float(), self.c4[rows].float(),
                None if self.mid is None else self.mid[rows].float())


# (cache dir, backbone, size, view name) -> views
_memory: dict[tuple[str, str, int, str], ViewFeatures] = {}


def _shrunk(picture: Image.Image, boxes: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """The picture scaled so that its longer side is ``size`` (augmenting a 2000-pixel photo
    costs ~40x more than its 320-pixel letterbox needs)."""
    scale = min(1.0, size / max(picture.size))
    if scale == 1.0:
        return picture, boxes
    new = (max(1, round(picture.size[0] * scale)), max(1, round(picture.size[1] * scale)))
    return picture.resize(new, Image.Resampling.BILINEAR), boxes * np.float32(scale)


def _augment(picture: Image.Image, boxes: np.ndarray, labels: list[int], view: int,
             size: int, fill: int) -> tuple[Image.Image, np.ndarray, list[int]]:
    """View ``view`` of a picture and its boxes (original picture pixels in and out)."""
    if view == 0:
        return picture, boxes, labels
    picture, boxes = _shrunk(picture, boxes, size)
    h, w = picture.size[1], picture.size[0]
    steps: list[Any] = [v2.RandomHorizontalFlip(p=1.0 if view == 1 else 0.5)]
    if view >= 2:
        scale_jitter = v2.RandomZoomOut(fill={tv_tensors.Image: fill, "others": 0},
                                        side_range=(1.0, 2.0), p=1.0)
        steps.append(scale_jitter if view % 2 == 0 or not labels else v2.RandomIoUCrop())
        steps.append(v2.ClampBoundingBoxes())
        steps.append(v2.SanitizeBoundingBoxes(min_size=2.0))
    sample = {"image": picture,
              "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32)
                                                .reshape(-1, 4), format="XYXY",
                                                canvas_size=(h, w)),
              "labels": torch.as_tensor(labels, dtype=torch.int64)}
    out = v2.Compose(steps)(sample)
    return (out["image"], out["boxes"].numpy().astype(np.float32).reshape(-1, 4),
            [int(v) for v in out["labels"]])


def _view_file(cache_dir: Path, backbone: DetectionBackbone, size: int, view: str) -> Path:
    return cache_dir / f"detection-{backbone.name}-{size}-{view}.safetensors"


def _load(path: Path, files: list[str]) -> ViewFeatures | None:
    try:
        tensors, meta = tensorfile.load(path)
    except (OSError, ValueError, RuntimeError):
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("files") != files:
        return None
    return ViewFeatures(tensors["c3"], tensors["c4"], files, meta["boxes"], meta["labels"])


def _build(prefix: PrefixEngine, data: TaskData, items: list[tuple[str, Any]], view: int,
           spec: LetterboxSpec, seed: int) -> ViewFeatures:
    c3s, c4s, all_boxes, all_labels = [], [], [], []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed * 1009 + view)
        for start in range(0, len(items), BATCH):
            batch = []
            for item, target in items[start:start + BATCH]:
                picture = open_image(data.path(item), name=item)
                boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
                picture, boxes, labels = _augment(picture, boxes, list(target["labels"]), view,
                                                  spec.crop, spec.fill)
                boxed, geometry = letterbox_picture(picture, spec)
                batch.append(to_tensor(boxed, spec))
                all_boxes.append(geometry.to_tensor(boxes).round(2).tolist())
                all_labels.append(labels)
            c3, c4 = prefix(torch.from_numpy(np.stack(batch)))
            c3s.append(c3.half())
            c4s.append(c4.half())
    return ViewFeatures(torch.cat(c3s), torch.cat(c4s), [f for f, _ in items], all_boxes,
                        all_labels)


def view_features(prefix: PrefixEngine, data: TaskData, split: str, view: int,
                  backbone: DetectionBackbone, size: int, cache_dir: Path) -> ViewFeatures:
    """One view of the train or val images: memory, then disk, then computed (and saved)."""
    name = "val" if split == "val" else f"train{view}"
    key = (str(cache_dir), backbone.name, size, name)
    items = data.val if split == "val" else data.train
    files = [f for f, _ in items]
    if key in _memory and _memory[key].files == files:
        return _memory[key]
    path = _view_file(cache_dir, backbone, size, name)
    found = _load(path, files) if path.exists() else None
    if found is None:
        seed = int(data.extra.get("seed", 0))
        found = _build(prefix, data, items, 0 if split == "val" else view,
                       letterbox_spec(backbone, size), seed)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tensorfile.save(path, {"c3": found.c3, "c4": found.c4},
                        {"version": CACHE_VERSION, "files": files, "boxes": found.boxes,
                         "labels": found.labels})
    _memory[key] = found
    return found


def train_views(prefix: PrefixEngine, data: TaskData, views: int, backbone: DetectionBackbone,
                size: int, cache_dir: Path, deadline: float,
                seconds_per_view: float) -> list[ViewFeatures]:
    """Up to ``views`` cached views of the training images; beyond the plain one, a view is
    only built while the deadline leaves room for it and for some training after it."""
    out = [view_features(prefix, data, "train", 0, backbone, size, cache_dir)]
    for view in range(1, min(views, MAX_VIEWS)):
        cached = (str(cache_dir), backbone.name, size, f"train{view}") in _memory or \
            _view_file(cache_dir, backbone, size, f"train{view}").exists()
        cost = seconds_per_view * len(data.train)
        if not cached and time.monotonic() + 3 * cost > deadline:
            break
        out.append(view_features(prefix, data, "train", view, backbone, size, cache_dir))
    return out


def val_geometry(data: TaskData, size: int) -> list[Any]:
    """Where each val image sits in its letterboxed input."""
    return [letterbox_geometry(int(t["width"]), int(t["height"]), size) for _, t in data.val]


def is_cached(backbone: DetectionBackbone, size: int) -> bool:
    """Whether this process already holds ``backbone``'s features at input size ``size``."""
    return any(key[1:3] == (backbone.name, size) for key in _memory)
