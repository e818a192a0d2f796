"""The versioned model repository: ``REPO/<model>/<version>/``."""

from .metadata import (
    METADATA_FILE,
    ONNX_FILE,
    REPORT_FILE,
    WARMUP_DIR,
    WEIGHTS_FILE,
    ModelMetadata,
    TensorSpec,
)
from .store import ModelRepository, VersionRef, check_model_name, require_repo_dir

__all__ = [
    "METADATA_FILE",
    "ONNX_FILE",
    "REPORT_FILE",
    "WARMUP_DIR",
    "WEIGHTS_FILE",
    "ModelMetadata",
    "ModelRepository",
    "TensorSpec",
    "VersionRef",
    "check_model_name",
    "require_repo_dir",
]
