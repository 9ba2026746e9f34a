"""Deadlines: every request gets one, and work whose deadline has passed is never run.

A request's deadline is its arrival plus the shortest of: the default maximum queue time
(`TABSERVE_MAX_QUEUE_TIME_MS`), the `X-Request-Timeout-Ms` header (milliseconds, any route), and for the Open
Inference Protocol the request's `parameters.timeout` (microseconds, Triton's semantics: it may only shorten
the default; 0 means none). The HTTP process checks it before queueing, the worker again before the batch
runs (service/engine/batching.py); a request past it is answered 503 `deadline_exceeded`, never computed.
"""

from __future__ import annotations

from service.core.errors import BadRequest, DeadlineExceeded

HEADER = b"x-request-timeout-ms"


def from_headers(arrival: float, default_seconds: float, headers: dict[bytes, bytes]) -> float:
    """The deadline from the server default and the optional header; a malformed header is a 400."""
    value = headers.get(HEADER)
    if value is None:
        return arrival + default_seconds
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = -1.0
    if not milliseconds > 0 or milliseconds == float("inf"):
        raise BadRequest(
            f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {value.decode(errors='replace')!r}",
            reason="bad_header",
            field="x-request-timeout-ms",
        )
    return arrival + min(default_seconds, milliseconds / 1000)


def shorten(deadline: float, arrival: float, timeout_us: int | None) -> float:
    """Apply an OIP `parameters.timeout` (µs): only ever earlier than `deadline`; 0 or None changes nothing."""
    if not timeout_us:
        return deadline
    return min(deadline, arrival + timeout_us / 1_000_000)


def expired(arrival: float, deadline: float, now: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"request timeout expired before inference: waited {(now - arrival) * 1000:.0f} ms, "
        f"the deadline was {(deadline - arrival) * 1000:.0f} ms after arrival",
    )
