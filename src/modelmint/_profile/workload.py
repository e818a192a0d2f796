"""A DataLoader training workload with the knobs the advisor names (the benchmark's subject).

The *defined bottlenecked configuration*: MobileNetV2 with ImageNet weights, frozen
except its last block (``features[18]``) and a new head, batch 32, the full-size JPEGs of a
folder decoded with PIL in the training process (``num_workers=0``) and a per-sample Python
transform chain (PIL Resize, RandomCrop, RandomHorizontalFlip, ColorJitter, ToTensor,
Normalize). Each knob of :class:`WorkloadConfig` is one change the advisor can propose:

- ``draft_decode``: PIL draft mode (libjpeg DCT scaling) to decode close to the resize size;
- ``cache_decoded``: keep each decoded, resized uint8 image after its first decode;
- ``tensor_transforms``: crop and flip as uint8 array views per sample; ColorJitter, ToTensor
  and Normalize as one colour matrix per image applied to the whole batch in the DataLoader's
  ``collate_fn`` (:mod:`modelmint._data.batch_colour`);
- ``channels_last``: the model and its inputs in channels_last memory format;
- ``num_workers``: DataLoader worker processes (persistent);
- ``frozen_onnxruntime``: the frozen ``features[:18]`` run by ONNX Runtime (:mod:`.frozen`).

The ImageNet weights file (``backbone_weights``, a torchvision MobileNetV2 state dict) is given
by the caller: the trainer owns its backbones and where their weights are installed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1

from .._data.batch_colour import BatchColour, CropFlipJitter
from .._data.layout import discover
from .._data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..errors import DataError
from ._torch_private import release_persistent_workers
from .frozen import OnnxFrozenPrefix, frozen_prefix_facts
from .pipeline import instrument_loader, stage
from .trace import StepTracer

KNOBS = ("draft_decode", "cache_decoded", "tensor_transforms", "channels_last", "num_workers",
         "frozen_onnxruntime")
TRAINABLE_BLOCK = 18  # MobileNetV2 features[18]: the last block, trained with the head


@dataclass(frozen=True)
class WorkloadConfig:
    batch_size: int = 32
    num_workers: int = 0
    draft_decode: bool = False
    cache_decoded: bool = False
    tensor_transforms: bool = False
    channels_last: bool = False
    frozen_onnxruntime: bool = False
    resize: int = 256
    crop: int = 224
    image_limit: int | None = None  # tests: only the first N training images

    def changed(self, knob: str) -> WorkloadConfig:
        """This config with one knob switched the way the advisor suggests."""
        if knob == "num_workers":
            return replace(self, num_workers=1 if self.num_workers == 0 else 0)
        return replace(self, **{knob: True})  # every boolean knob's advised direction

    def describe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KNOBS}


class JpegFolder(Dataset[tuple[Any, int]]):
    """The training images of a folder, decoded and augmented per sample."""

    times_own_stages = True  # stage() blocks below: instrument_loader must not wrap transform

    def __init__(self, files: list[tuple[Path, int]], config: WorkloadConfig) -> None:
        self.files, self.config = files, config
        self.cache: dict[int, Image.Image] = {}
        self.arrays: dict[int, np.ndarray] = {}  # the cache as uint8 arrays (tensor path)
        c = config
        self.resize = v1.Resize(c.resize)
        self.transform: Callable[[Any], Any]
        if c.tensor_transforms:
            # Per sample only index arithmetic and the jitter's random factors; the colour
            # work, float conversion and normalisation run once per batch (collate_fn).
            self.transform = CropFlipJitter(c.crop, 0.4, 0.4, 0.4)
        else:
            self.transform = v1.Compose([
                v1.RandomCrop(c.crop), v1.RandomHorizontalFlip(), v1.ColorJitter(0.4, 0.4, 0.4),
                v1.ToTensor(), v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.collate = BatchColour(IMAGENET_MEAN, IMAGENET_STD) if c.tensor_transforms else None
        sizes = [Image.open(p).size for p, _ in files[:32]]
        self.profile_facts = {
            "mean_source_pixels": float(np.mean([w * h for w, h in sizes])) if sizes else 0.0,
            "target_pixels": float(c.resize * c.resize),
            "cache_mb": len(files) * c.resize * c.resize * 1.4 * 3 / 2**20,
            "draft_decode": c.draft_decode, "cache_decoded": c.cache_decoded}

    def __len__(self) -> int:
        return len(self.files)

    def _decoded(self, index: int) -> Image.Image:
        """The image decoded and resized to the short side (cached with ``cache_decoded``)."""
        cached = self.cache.get(index)
        if cached is not None:
            return cached
        path = self.files[index][0]
        with stage("read"):
            data = path.read_bytes()
        with stage("decode"):
            source = Image.open(io.BytesIO(data))
            if self.config.draft_decode:
                source.draft("RGB", (self.config.resize, self.config.resize))
            img = source.convert("RGB")
        with stage("transform"):  # the chain's first op (Resize), kept with the cache
            img = self.resize(img)
        assert isinstance(img, Image.Image)
        if self.config.cache_decoded:
            self.cache[index] = img
        return img

    def _array(self, index: int) -> np.ndarray:
        array = self.arrays.get(index)
        if array is None:
            array = np.asarray(self._decoded(index))
            if self.config.cache_decoded:
                self.arrays[index] = array
                self.cache.pop(index, None)
        return array

    def __getitem__(self, index: int) -> tuple[Any, int]:
        source = self._array(index) if self.config.tensor_transforms else self._decoded(index)
        with stage("transform"):
            return self.transform(source), self.files[index][1]


def training_files(data_root: Path, limit: int | None = None) -> list[tuple[Path, int]]:
    layout = discover(data_root)
    files = [(s.path, layout.classes.index(s.label)) for s in layout.train
             if s.path.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not files:
        raise DataError(f"{data_root}: no JPEG/PNG training images found")
    if limit:  # every class, interleaved, so a small subset still has all labels
        by_class = [[f for f in files if f[1] == c] for c in range(len(layout.classes))]
        files = [f for group in zip(*by_class, strict=False) for f in group][:limit]
    return files


def build_model(classes: int, backbone_weights: Path) -> Any:
    """MobileNetV2 with the ImageNet weights of ``backbone_weights``, frozen except block 18 and
    a new head of ``classes`` outputs."""
    import torchvision
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(backbone_weights, map_location="cpu", weights_only=True))
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*model.features[TRAINABLE_BLOCK].parameters(), *model.classifier.parameters()]:
        p.requires_grad_(True)
    model.eval()  # BatchNorm statistics stay frozen; dropout off: steady timings
    return model


class Workload:
    """Model, optimizer and DataLoader for one config; :meth:`run` trains ``steps`` steps."""

    def __init__(self, data_root: Path, config: WorkloadConfig, *, backbone_weights: Path,
                 seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.config = config
        files = training_files(Path(data_root), config.image_limit)
        self.model: Any = build_model(max(label for _, label in files) + 1, backbone_weights)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.trainable_block = self.model.features[TRAINABLE_BLOCK]
        prefix = self.model.features[:TRAINABLE_BLOCK]
        if config.frozen_onnxruntime:
            prefix = OnnxFrozenPrefix(prefix, torch.zeros(1, 3, config.crop, config.crop))
            self.model.features = nn.Sequential(prefix, self.trainable_block)
        self.frozen_facts = frozen_prefix_facts(prefix, self.model,
                                                f"features[:{TRAINABLE_BLOCK}]")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        self.dataset = JpegFolder(files, config)
        self.loader = instrument_loader(DataLoader(
            # A data set smaller than a batch still gives one (smaller) batch per epoch.
            self.dataset, batch_size=min(config.batch_size, len(files)), shuffle=True,
            drop_last=True,
            num_workers=config.num_workers, persistent_workers=config.num_workers > 0,
            collate_fn=self.dataset.collate, generator=torch.Generator().manual_seed(seed)))

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_step(self, x: torch.Tensor, y: torch.Tensor, tracer: StepTracer | None) -> None:
        """Forward + backward, then the optimizer step (the tracer's compute and tail)."""
        compute = tracer.phase("compute") if tracer else _NULL
        tail = tracer.phase("tail") if tracer else _NULL
        with compute:
            loss = nn.functional.cross_entropy(self.model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
        with tail:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def run(self, tracer: StepTracer, steps: int) -> int:
        """Train ``steps`` steps (as many epochs as that takes); returns steps done."""
        self.trainable_block.train()
        # Batches are NCHW until h2d; the frozen prefix's share and engine feed the advisor.
        tracer.note(channels_last=self.config.channels_last, frozen_prefix=self.frozen_facts)
        done = 0
        while done < steps:
            for x, y in tracer.loader(self.loader):
                with tracer.phase("h2d"):
                    x = self.to_device(x)
                self.train_step(x, y, tracer)
                tracer.end_step(samples=len(y))
                done += 1
                if done >= steps:
                    break
        return done

    def epoch_steps(self) -> int:
        return len(self.dataset) // min(self.config.batch_size, len(self.dataset))

    def sample_batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A few real batches, already on the device, for the replay probe."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for x, y in self.loader:
            out.append((self.to_device(x), y))
            if len(out) >= count:
                break
        return out

    def close(self) -> None:
        # Persistent workers end with their iterator; drop it explicitly.
        release_persistent_workers(self.loader)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _Null()
