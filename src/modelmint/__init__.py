"""modelmint: a folder of labelled data to a trained, evaluated, optimized, served model.

The command line is ``mint``; the same steps from Python::

    import modelmint
    result = modelmint.train("data/flowers", "flowers", budget=300)
    modelmint.predict(["rose.jpg"], "flowers", repo="models")
"""

from ._api import optimize, predict, serve, train
from ._repository import ModelRepository
from .errors import (
    AudioDecodeError,
    Conflict,
    DataError,
    DeadlineExceeded,
    ImageDecodeError,
    InvalidInput,
    MintError,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    RepositoryError,
    ServerBusy,
    TrainingInterrupted,
    Unauthorized,
)

__all__ = [
    "AudioDecodeError",
    "Conflict",
    "DataError",
    "DeadlineExceeded",
    "ImageDecodeError",
    "InvalidInput",
    "MintError",
    "ModelNotReady",
    "ModelRepository",
    "NotFound",
    "PayloadTooLarge",
    "RepositoryError",
    "ServerBusy",
    "TrainingInterrupted",
    "Unauthorized",
    "optimize",
    "predict",
    "serve",
    "train",
]
