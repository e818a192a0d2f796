"""The versioned model repository: ``REPO/<model>/<version>/``, in a folder or in S3-compatible
object storage (``s3://bucket/prefix``, :mod:`.s3_repository`)."""

from .._onnx_check import check_external_data
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
from .store import (
    Ignored,
    ModelRepository,
    VersionRef,
    check_model_name,
    open_repository,
    require_repo_dir,
    resolve_version,
    version_number,
)

__all__ = [
    "CONFIG_FILE",
    "METADATA_FILE",
    "ONNX_FILE",
    "OPSET",
    "REPORT_FILE",
    "WARMUP_DIR",
    "WEIGHTS_FILE",
    "BatchingConfig",
    "Ignored",
    "ModelConfig",
    "ModelMetadata",
    "ModelRepository",
    "TensorInputSpec",
    "TensorSpec",
    "VersionPolicy",
    "VersionRef",
    "check_external_data",
    "check_model_name",
    "open_repository",
    "require_repo_dir",
    "resolve_version",
    "version_number",
]
