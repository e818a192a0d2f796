"""Image classification: a folder of class folders of images (or ``train``/``val`` folders of
them); transfer learning from ImageNet backbones on cached activations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..._data.dataset import TaskData
from ..._data.images import IMAGE_SUFFIXES, load_image_data
from ..classification import classification_task, count_files, with_reject_class
from ..contract import Candidate, LoadOptions

# ``--epochs N``: MobileNetV2, linear head first, then every tail block fine-tuned for N epochs
# at a low rate on both views (centre crop and its mirror), at 224 pixels.
FIXED_BACKBONE = "mobilenet_v2"
NAME = "image-classification"
# Importing the candidates costs torch and torchvision (seconds): only training pays it, not
# detecting which task a folder holds.


def _fixed_plan(epochs: int) -> tuple[str, dict[str, Any]]:
    from .backbones import IMAGE_BACKBONES

    p = f"{FIXED_BACKBONE}."
    return f"{FIXED_BACKBONE}/finetune", {
        p + "finetune_lr": 3e-5, p + "batch_size": 32, p + "epochs": epochs,
        p + "unfreeze": len(IMAGE_BACKBONES[FIXED_BACKBONE].tail_units),
        p + "augmentation_views": 2, p + "input_size": 224}


def _load(path: Path, options: LoadOptions) -> TaskData:
    data = load_image_data(path, seed=options.seed, group_by=options.group_by,
                           strict=options.strict)
    return with_reject_class(data, options, IMAGE_SUFFIXES)


def _auto_tune(data: TaskData, run_dir: Path, console: Console, deadline: float) -> None:
    from ..._profile.commands import auto_tune_run
    from ..._train.backbone import MOBILENET_V2, weights_path

    auto_tune_run(data.root, run_dir, console, deadline,
                  backbone_weights=weights_path(MOBILENET_V2))


def _candidates() -> list[Candidate]:
    from .candidates import image_candidates

    return list(image_candidates())


TASK = classification_task(
    NAME, "a folder of class folders of images (root/<class>/*.jpg or "
    "root/{train,val}/<class>/*)",
    detect=lambda root: count_files(root, IMAGE_SUFFIXES), load=_load,
    candidates=_candidates, fixed_plan=_fixed_plan,
    options=frozenset({"group_by", "reject_dir", "profile", "auto_tune"}), auto_tune=_auto_tune)
