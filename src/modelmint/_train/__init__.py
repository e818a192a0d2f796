"""Training: transfer learning from ImageNet backbones, evaluation, publishing."""

from .loop import Hyper
from .run import TrainOptions, TrainResult, resume, train

__all__ = ["Hyper", "TrainOptions", "TrainResult", "resume", "train"]
