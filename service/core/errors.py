"""One error family for the server: each carries its HTTP status and a bounded `reason` for metrics.

Every client mistake becomes one of these, is answered as `{"error": ..., "reason": ..., "field"?, "expected"?,
"got"?}` with a 4xx status, and never reaches the model. (The Open Inference Protocol only requires `error`.)
"""

from __future__ import annotations

from typing import Any

MISSING_KEY = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"
"""The 401 of every route behind the API key, REST and gRPC."""
NOT_READY = "no inference worker is ready (still loading, or being replaced)"
"""Every readiness 503 (`/v2/health/ready`, a model's `ready`, `/health`'s plain-text `not ready` aside)."""


class ServiceError(Exception):
    status = 500
    reason = "internal"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        expected: Any = None,
        got: Any = None,
    ):
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.field, self.expected, self.got = field, expected, got

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "reason": self.reason}
        for key in ("field", "expected", "got"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body


class BadRequest(ServiceError):
    """The body cannot be read at all (malformed JSON) or breaks the Open Inference Protocol's rules."""

    status = 400
    reason = "bad_request"


class InvalidInput(ServiceError):
    """Readable, but the fields or values are wrong for this model."""

    status = 422
    reason = "invalid_input"


class PayloadTooLarge(ServiceError):
    status = 413
    reason = "too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    reason = "wrong_content_type"


class Unauthorized(ServiceError):
    status = 401
    reason = "unauthorized"


class Forbidden(ServiceError):
    """Understood and refused: the model control mode, or the key sent, does not allow it."""

    status = 403
    reason = "forbidden"


class ModelNotFound(ServiceError):
    status = 404
    reason = "model_not_found"


class Conflict(ServiceError):
    """The request is fine but this version cannot do it (e.g. explain with a version that has no explain graph)."""

    status = 409
    reason = "conflict"


class UnknownRequest(ServiceError):
    """Feedback for a request id the prediction log does not hold (never answered, not sampled, past retention)."""

    status = 404
    reason = "unknown_request"


class ModelNotReady(ServiceError):
    status = 503
    reason = "model_not_ready"


class Unavailable(ServiceError):
    """The request was fine but was not run: the server is shedding load. Always answered with `Retry-After`."""

    status = 503
    reason = "overloaded"
    retry_after = 1

    def __init__(self, message: str, *, retry_after: int | None = None, **details: Any):
        super().__init__(message, **details)
        if retry_after is not None:
            self.retry_after = retry_after


class Overloaded(Unavailable):
    """More work waits for the workers (or is being read) than the configured bounds allow."""

    reason = "overloaded"


class DeadlineExceeded(Unavailable):
    """The request's deadline (its timeout, or the default maximum queue time) passed before inference."""

    reason = "deadline_exceeded"


class WorkerUnavailable(Unavailable):
    """The inference worker holding the request died, or none is running (a replacement is starting)."""

    reason = "worker_unavailable"


def describe(value: Any) -> str:
    """A short, safe rendering of a client value for an error message (never the whole payload)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
