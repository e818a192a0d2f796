"""The versioned model repository: ``REPO/<model>/<version>/``."""

from .config import CONFIG_FILE, BatchingConfig, ModelConfig, VersionPolicy
from .metadata import (
    METADATA_FILE,
    ONNX_FILE,
    OPSET,
    REPORT_FILE,
    WARMUP_DIR,
    WEIGHTS_FILE,
    ModelMetadata,
    TensorInputSpec,
    TensorSpec,
)
from .store import ModelRepository, VersionRef, check_model_name, require_repo_dir

__all__ = [
    "CONFIG_FILE",
    "METADATA_FILE",
    "ONNX_FILE",
    "OPSET",
    "REPORT_FILE",
    "WARMUP_DIR",
    "WEIGHTS_FILE",
    "BatchingConfig",
    "ModelConfig",
    "ModelMetadata",
    "ModelRepository",
    "TensorInputSpec",
    "TensorSpec",
    "VersionPolicy",
    "VersionRef",
    "check_model_name",
    "require_repo_dir",
]
