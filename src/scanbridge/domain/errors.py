"""One error hierarchy; every error carries a stable `code` that clients and tests rely on."""

from __future__ import annotations

from typing import Any


class ScanbridgeError(Exception):
    """Base of every error scanbridge raises on purpose."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ValidationError(ScanbridgeError):
    """A request or payload that does not follow the contract."""

    code = "VALIDATION_ERROR"


class PayloadTooLargeError(ValidationError):
    """A request whose content is too large to store or process (HTTP 413)."""

    code = "PAYLOAD_TOO_LARGE"


class NotFoundError(ScanbridgeError):
    """The thing asked for does not exist (or is not visible to the caller)."""

    code = "NOT_FOUND"


class TaskNotFoundError(NotFoundError):
    """No such task."""

    code = "TASK_NOT_FOUND"


class ResultsNotReadyError(NotFoundError):
    """The task has not posted results yet."""

    code = "RESULTS_NOT_READY"


class ConflictError(ScanbridgeError):
    """The request conflicts with the task's current state."""

    code = "CONFLICT"


class InvalidTransitionError(ConflictError):
    """A status change the state machine does not allow."""

    code = "INVALID_TRANSITION"


class TaskIdConflictError(ConflictError):
    """A webhook reusing a task_id that another company's task holds."""

    code = "TASK_ID_CONFLICT"


class TaskPayloadMismatchError(ConflictError):
    """A redelivery of a task_id whose scans, case or model differ from the stored task's."""

    code = "TASK_PAYLOAD_MISMATCH"


class AuthError(ScanbridgeError):
    """Missing or invalid credentials."""

    code = "UNAUTHORIZED"


class WebhookSignatureError(AuthError):
    """A webhook whose Standard Webhooks signature is missing, wrong or stale."""

    code = "WEBHOOK_SIGNATURE_INVALID"


class ForbiddenError(ScanbridgeError):
    """Valid credentials, but not for this."""

    code = "FORBIDDEN"


class RouteNotAvailableError(ScanbridgeError):
    """The route exists, but not in this deployment (e.g. synchronous inference in the API Lambda): HTTP 501."""

    code = "ROUTE_NOT_AVAILABLE"


class HostNotAllowedError(ScanbridgeError):
    """A request whose `Host` is not a loopback name in open local mode (DNS-rebinding protection; 421)."""

    code = "HOST_NOT_ALLOWED"


class TaskTokenExpiredError(ScanbridgeError):
    """The task JWT expired before the work could start."""

    code = "TASK_TOKEN_EXPIRED"


class NoPlatformCredentialsError(ScanbridgeError):
    """Neither a task JWT nor a platform API key is available to post results."""

    code = "NO_PLATFORM_CREDENTIALS"


class DeviceUnavailableError(ScanbridgeError):
    """SCANBRIDGE_DEVICE asks for a device (CUDA) whose execution provider does not work here."""

    code = "DEVICE_UNAVAILABLE"


class ModelNotFoundError(NotFoundError):
    """The webhook named a model the registry does not have."""

    code = "MODEL_NOT_FOUND"


class ModelInvalidError(ValidationError):
    """An uploaded model (spec or ONNX file) that cannot be used as its spec says."""

    code = "MODEL_INVALID"


class ModelReadOnlyError(ConflictError):
    """A change to a built-in model (built-ins are code, not registry entries)."""

    code = "MODEL_READ_ONLY"


# --- scans -------------------------------------------------------------------------------------


class ScanError(ScanbridgeError):
    """A scan could not be fetched, opened or analysed; fails that scan only."""

    code = "SCAN_FAILED"


class ScanUrlForbiddenError(ScanError):
    """The URL breaks the safe-fetch rules (scheme, host allowlist, address class)."""

    code = "SCAN_URL_FORBIDDEN"


class ScanUrlExpiredError(ScanError):
    """The presigned URL expired before it was fetched."""

    code = "SCAN_URL_EXPIRED"


class ScanDownloadError(ScanError):
    """The download failed (HTTP error, connection error, timeout)."""

    code = "SCAN_DOWNLOAD_FAILED"


class ScanDownloadTimeoutError(ScanDownloadError):
    """The download ran past SCANBRIDGE_DOWNLOAD_TIMEOUT_S or below SCANBRIDGE_DOWNLOAD_MIN_BYTES_PER_S."""

    code = "SCAN_DOWNLOAD_TIMEOUT"


class ScanContentEncodingError(ScanDownloadError):
    """The server sent a compressed Content-Encoding (gzip, deflate, br...): refused, never inflated."""

    code = "SCAN_CONTENT_ENCODING_REFUSED"


class ScanTooLargeError(ScanError):
    """The scan is larger than SCANBRIDGE_MAX_SCAN_BYTES."""

    code = "SCAN_TOO_LARGE"


class TooManyTilesError(ScanError):
    """The scan's tissue needs more tiles than SCANBRIDGE_MAX_TILES_PER_SCAN."""

    code = "SCAN_TOO_MANY_TILES"


class UnsupportedFormatError(ScanError):
    """The file is not a format any reader handles."""

    code = "SCAN_UNSUPPORTED_FORMAT"


class CorruptScanError(ScanError):
    """The file claims a supported format but its data cannot be decoded."""

    code = "SCAN_CORRUPT"


class UnsafeArchiveError(ScanError):
    """A ZIP that breaks the unpacking guards (size, count, ratio, paths, links)."""

    code = "SCAN_ARCHIVE_UNSAFE"


class ScanStorageFullError(ScanError):
    """The disk ran out of space while a scan was stored or processed: transient, retried."""

    code = "SCAN_STORAGE_FULL"


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error is the file system saying it is full (ENOSPC, or EDQUOT: over quota)."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class InferenceError(ScanError):
    """The model failed on a scan."""

    code = "INFERENCE_FAILED"


# --- delivery ----------------------------------------------------------------------------------


class DeliveryError(ScanbridgeError):
    """Posting results to the platform failed."""

    code = "DELIVERY_FAILED"

    def __init__(self, message: str, *, status_code: int | None = None, retryable: bool = True,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)
        self.status_code = status_code
        self.retryable = retryable


class WorkerFailedError(ScanbridgeError):
    """The worker process ended without writing results."""

    code = "WORKER_FAILED"


class TaskCancelledError(ScanbridgeError):
    """The task was cancelled while the worker ran."""

    code = "TASK_CANCELLED"
