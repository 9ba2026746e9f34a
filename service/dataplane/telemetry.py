"""What each request leaves behind for an operator, over both protocols: its server span, its access-log line and,
for a traced one, an exemplar on the latency histogram.

A front-end opens a `Call` (service/dataplane/gateway.py) with the request's headers, method and route; `opened`
starts the span when tracing is on (service/core/tracing.py), `closed` ends it and writes the access line when
`TABSERVE_ACCESS_LOG=json` (service/core/logs.py). With both off, each costs one test.
"""

from __future__ import annotations

import os

import orjson

from service.core import exemplars, logs, metrics, tracing
from service.core.settings import Settings


class Telemetry:
    """One HTTP process's access log and request spans."""

    def __init__(self, settings: Settings, process: int):
        self.process = process  # the HTTP process's index (0 … http_processes − 1)
        self.access = None
        if settings.access_log == "json":
            self.access = logs.AccessLog(settings.access_log_buffer_lines, metrics.access_log_dropped_total)
        self.pid = os.getpid()

    def opened(self, call) -> None:
        if tracing.tracer is None:
            return
        _template(call)
        attributes = {"http.request.method": call.method, "http.route": call.route,
                      "tabserve.request_id": call.request_id}  # fmt: skip
        name = call.route if call.method == "gRPC" else f"{call.method} {call.route}"
        call.span = tracing.request_span(name, call.headers, call.arrival, attributes)
        call.trace_token = tracing.enter(call.span)  # current while it is handled: log lines carry its ids

    def closed(self, call, elapsed: float) -> None:
        span = call.span
        if span is not None:
            self._end_span(call, span, elapsed)
        if self.access is not None:
            _template(call)
            self.access.write(self.fields(call, elapsed))

    def _end_span(self, call, span, elapsed: float) -> None:
        attributes = {"http.response.status_code": call.status}
        if call.model is not None:
            attributes["tabserve.model"], attributes["tabserve.version"] = call.model.name, call.model.version
        if reason := _reason(call):
            attributes["tabserve.reason"] = reason
        span.set_attributes(attributes)  # one call: each set_attribute takes the span's lock
        if call.status >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, reason or str(call.status)))
        tracing.leave(call.trace_token)
        sampled = span.is_recording()
        span.end()
        if sampled:
            exemplars.observe(metrics.request_duration_seconds, (call.model_name, call.endpoint), elapsed,
                              format(span.get_span_context().trace_id, "032x"))  # fmt: skip

    def fields(self, call, elapsed: float) -> dict:
        """The access line of one request (service/core/logs.py writes it, with its time)."""
        queue_ms = inference_ms = None
        if call.timing is not None:  # "queue;dur=0.052, inference;dur=0.210" (service/engine/worker.py)
            queue, inference = call.timing.split(b", ")
            queue_ms, inference_ms = float(queue.split(b"=")[1]), float(inference.split(b"=")[1])
        trace_id = span_id = None
        if call.span is not None and (context := call.span.get_span_context()).is_valid:
            trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
        model = call.model
        return {
            "request_id": call.request_id, "trace_id": trace_id, "span_id": span_id, "method": call.method,
            "route": call.route, "model": model.name if model else None, "version": model.version if model else None,
            "rows": call.job.rows if call.job is not None else None, "status": call.status,
            "reason": _reason(call), "bytes_in": call.bytes_in, "bytes_out": call.bytes_out,
            "duration_ms": round(elapsed * 1000, 3), "queue_ms": queue_ms, "inference_ms": inference_ms,
            "client": client_text(call.client), "http_process": self.process, "pid": self.pid,
        }  # fmt: skip

    def request(self, method: str, route: str, status: int, request_id: str, elapsed: float, client,
                bytes_in: int, bytes_out: int) -> None:  # fmt: skip
        """The access line of a request that is not a prediction (metadata, health, feedback, the repository)."""
        if self.access is not None:
            self.access.write({
                "request_id": request_id, "method": method, "route": route, "status": status, "bytes_in": bytes_in,
                "bytes_out": bytes_out, "duration_ms": round(elapsed * 1000, 3), "client": client_text(client),
                "http_process": self.process, "pid": self.pid,
            })  # fmt: skip


def _template(call) -> None:
    """REST opens a call with its path's match; it becomes the route template only when something needs it."""
    if not isinstance(call.route, str):
        call.route = route_of(call.route)


def _reason(call) -> str | None:
    """Why a call was refused: a gRPC refusal says so; an error answer carries it in its body (service/codecs/
    answers.py error_answer, the REST refusals' bodies alike)."""
    if call.reason is not None:
        return call.reason
    if call.status < 400 or call.error_body is None:
        return None
    try:
        return orjson.loads(call.error_body).get("reason")
    except (orjson.JSONDecodeError, AttributeError):
        return None


def client_text(client) -> str | None:
    """ASGI's `(host, port)` as `host:port`; gRPC's peer (`ipv4:127.0.0.1:50000`) as it is."""
    if client is None or isinstance(client, str):
        return client
    return f"{client[0]}:{client[1]}"


def route_of(match) -> str:
    """A prediction path as its route template: `/v2/models/digits/versions/2/infer` → `/v2/models/{name}/…`."""
    path, parts, last = match.string, [], 0
    for group in ("name", "version"):
        if match.group(group) is not None:
            start, end = match.span(group)
            parts += [path[last:start], "{" + group + "}"]
            last = end
    return "".join(parts) + path[last:]
