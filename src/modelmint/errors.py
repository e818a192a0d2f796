"""One exception tree for the whole product.

Each error knows the HTTP status and the gRPC status code it maps to, so the HTTP and gRPC
adapters (and the CLI) never need a table of their own: they read ``err.http_status`` and
``err.grpc_code``. The message is written for the person who sent the bad input: it names the
file or field and what was expected.
"""

from __future__ import annotations


class MintError(Exception):
    """Base of every error modelmint raises on purpose."""

    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(MintError):
    """A request, file or option is malformed: wrong shape, dtype, encoding, value."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class ImageDecodeError(InvalidInput):
    """Bytes that are not a decodable image (or exceed the pixel limit)."""


class AudioDecodeError(InvalidInput):
    """Bytes that are not a decodable sound file (or exceed the duration limit)."""


class DataError(InvalidInput):
    """A data folder that cannot be trained on (layout, no classes, too few images)."""


class NotFound(MintError):
    """Unknown model, version, run directory or file."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelNotReady(MintError):
    """The model exists but no version of it can serve right now; ``retry_after`` (seconds),
    when known, is when it is likely to again (its worker is restarting, say)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLarge(InvalidInput):
    """A request body above the server's ``max_request_bytes``."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class RepositoryError(MintError):
    """The model repository is unreadable or a version's files are inconsistent."""

    http_status = 500
    grpc_code = "INTERNAL"


class TrainingInterrupted(MintError):
    """Ctrl-C during training; the run directory holds a checkpoint to resume from."""

    http_status = 499
    grpc_code = "CANCELLED"

    def __init__(self, message: str, run_dir: str) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class ServerBusy(MintError):
    """A bounded queue is full: the client should retry after ``retry_after`` seconds."""

    http_status = 503
    grpc_code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(MintError):
    """The request's timeout (its own parameter, or the server default) expired."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class Unauthorized(MintError):
    """A request without the access token where one is required (mint app off loopback)."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class Conflict(MintError):
    """The request contradicts the current state (e.g. deleting a project that is deployed)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"
