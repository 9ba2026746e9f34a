"""tabserve's errors as gRPC status codes (after Triton's mapping), and the API key from gRPC metadata.

Every error already carries the HTTP status the REST routes answer; gRPC clients get the matching code, and the
metrics keep counting the HTTP status (`tabserve_requests_total{endpoint="grpc_infer"}`), so alert rules and
dashboards read both protocols alike.
"""

from __future__ import annotations

import grpc
import orjson

from service.core.errors import ServiceError, Unavailable

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
BY_REASON = {"deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED, "cancelled": grpc.StatusCode.CANCELLED}


def code_for(error: ServiceError) -> grpc.StatusCode:
    """INVALID_ARGUMENT for bad input, NOT_FOUND, UNAVAILABLE (not ready, overloaded), RESOURCE_EXHAUSTED (too large),
    UNAUTHENTICATED, DEADLINE_EXCEEDED; INTERNAL only for a bug or a failed inference."""
    return BY_REASON.get(error.reason) or CODES.get(error.status, grpc.StatusCode.INTERNAL)


class Answered(ServiceError):
    """An error answer from an inference worker (a large body refused, a job dropped): already counted there."""

    def __init__(self, status: int, body: bytes, retry_after: int | None):
        payload = orjson.loads(body)
        super().__init__(payload.get("error", "inference failed"), reason=payload.get("reason"))
        self.status, self.retry_after = status, retry_after


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """End the call with the error's code and message (and `retry-after` in the trailers when it is a 503)."""
    retry_after = getattr(error, "retry_after", None) if isinstance(error, Unavailable | Answered) else None
    trailers = (("retry-after", str(retry_after)),) if retry_after is not None else ()
    await context.abort(code_for(error), error.message, trailers)


def headers(context: grpc.aio.ServicerContext) -> dict[bytes, bytes]:
    """The call's metadata in the shape service/core/auth.py reads (`authorization: Bearer <key>` or `x-api-key`)."""
    metadata = context.invocation_metadata() or ()
    return {key.encode(): value.encode() for key, value in metadata if isinstance(value, str)}
