"""OpenTelemetry traces, configured by the standard `OTEL_*` variables, across the HTTP processes and the workers.

Tracing is on in a process when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and
`OTEL_SDK_DISABLED` is not `true`); otherwise `tracer` stays None and a request does no tracing work beyond
testing it. Each process starts its own SDK (`start`, after the fork: the SDK's export thread does not survive
one) with its own resource (`process.pid`, `tabserve.process`: http or worker), so a trace shows which process
did what. The exporter speaks OTLP over HTTP/protobuf (the default) or gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL` or
`…_TRACES_PROTOCOL`); the sampler is the SDK's reading of `OTEL_TRACES_SAMPLER` (default: parent-based always-on).

What is traced: the request, a server span continuing the client's W3C `traceparent` (HTTP header or gRPC
metadata); admission; in the worker (or the inline lane) the queue wait, the batch (linked to every request in
it), each ONNX Runtime call and each answer's encoding. A sampled request's context travels to the worker in its
`Job.trace` — `(trace_id, span_id, queued_at)` — so the worker's spans have the request span as parent.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from contextlib import contextmanager

log = logging.getLogger("tabserve.tracing")

tracer = None
"""This process's OpenTelemetry tracer, or None while tracing is off (the one test on the hot path)."""

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_EPOCH_OFFSET_NS = 0
"""time.time_ns() − time.monotonic_ns(): jobs carry monotonic times (the same clock in every process), spans
want wall-clock nanoseconds."""


def wanted() -> bool:
    return any(os.environ.get(name) for name in ENDPOINTS) and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"


def start(role: str) -> None:
    """Start this process's SDK when tracing is configured (`role`: "http" or "worker"); idempotent."""
    global tracer, _EPOCH_OFFSET_NS
    if tracer is not None or not wanted():
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    attributes = {"process.pid": os.getpid(), "tabserve.process": role}
    if "OTEL_SERVICE_NAME" not in os.environ and "service.name" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "tabserve"
    provider = TracerProvider(resource=Resource.create(attributes))  # the sampler: OTEL_TRACES_SAMPLER
    if provider.sampler is ALWAYS_OFF:  # nothing can ever be recorded: no per-request work at all
        log.info("tracing configured with the sampler always_off: no spans")
        return
    provider.add_span_processor(BatchSpanProcessor(_exporter()))  # its queue and delays: OTEL_BSP_*
    atexit.register(provider.shutdown)  # export what is still queued
    _EPOCH_OFFSET_NS = time.time_ns() - time.monotonic_ns()
    tracer = provider.get_tracer("tabserve")
    log.info("tracing on: %s spans exported over OTLP", role)


def _exporter():
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*


def wall_ns(monotonic_seconds: float) -> int:
    """A `time.monotonic()` reading as the wall-clock nanoseconds spans are stamped with."""
    return int(monotonic_seconds * 1e9) + _EPOCH_OFFSET_NS


def request_span(name: str, headers: dict[bytes, bytes], arrival: float, attributes: dict):
    """The server span of one request, child of the client's span when its `traceparent` is valid."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = None
    if (traceparent := headers.get(b"traceparent")) is not None:
        carrier = {"traceparent": traceparent.decode("latin-1")}
        if (state := headers.get(b"tracestate")) is not None:
            carrier["tracestate"] = state.decode("latin-1")
        parent = extract(carrier)
    return tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                             start_time=wall_ns(arrival))  # fmt: skip


def job_trace(span) -> tuple[int, int, float] | None:
    """What a job carries to the worker for a sampled request: its span's ids, and when it was queued."""
    if span is None or not span.is_recording():
        return None
    context = span.get_span_context()
    return context.trace_id, context.span_id, time.monotonic()


def _parent(trace: tuple[int, int, float]):
    from opentelemetry import trace as api
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    context = SpanContext(trace[0], trace[1], is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return api.set_span_in_context(NonRecordingSpan(context)), context


def child(name: str, trace: tuple[int, int, float], start: float, end: float, attributes=None) -> None:
    """A finished span under a request's span (`start`, `end`: monotonic seconds), e.g. the queue wait."""
    context, _ = _parent(trace)
    span = tracer.start_span(name, context=context, start_time=wall_ns(start), attributes=attributes)
    span.end(end_time=wall_ns(end))


@contextmanager
def batch(jobs, picked: float):
    """The worker's span of one batch: a child of the first traced request, linked to every traced request,
    and the queue wait of each one (from `Gateway.submit` to `picked`). Yields whether it traces (else a no-op)."""
    traced = [job for job in jobs if job.trace is not None] if tracer is not None else []
    if not traced:
        yield False
        return
    from opentelemetry import trace as api
    from opentelemetry.trace import Link

    links = [Link(_parent(job.trace)[1]) for job in traced]
    for job in traced:
        child("queue wait", job.trace, job.trace[2], picked, {"tabserve.request_id": job.request_id})
    attributes = {"tabserve.requests": len(jobs), "tabserve.rows": sum(job.rows for job in jobs)}
    span = tracer.start_span("batch", context=_parent(traced[0].trace)[0], links=links, attributes=attributes,
                             start_time=wall_ns(picked))  # fmt: skip
    with api.use_span(span, end_on_exit=True):
        yield True


@contextmanager
def span(name: str, attributes: dict | None = None):
    """A span under the current one (the batch's), when there is one being recorded; else nothing."""
    if tracer is None:
        yield
        return
    from opentelemetry import trace as api

    if not api.get_current_span().is_recording():
        yield
        return
    with tracer.start_as_current_span(name, attributes=attributes):
        yield


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span id in hex, for log lines; None when nothing is being traced."""
    if tracer is None:
        return None
    from opentelemetry import trace as api

    context = api.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
