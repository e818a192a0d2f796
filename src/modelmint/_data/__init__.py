"""Data: folder layouts, the data check and the shared preprocessing spec."""

from .check import DataReport, FileIssue, check_dataset
from .layout import DatasetLayout, Sample, discover
from .preprocess import ImageSpec, open_image, preprocess

__all__ = [
    "DataReport",
    "DatasetLayout",
    "FileIssue",
    "ImageSpec",
    "Sample",
    "check_dataset",
    "discover",
    "open_image",
    "preprocess",
]
