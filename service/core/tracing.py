"""OpenTelemetry traces, configured by the standard `OTEL_*` variables, across the HTTP processes and the workers.

Tracing is on in a process when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and
`OTEL_SDK_DISABLED` is not `true`); otherwise `tracer` stays None and a request does no tracing work beyond
testing it. Each process starts its own SDK (`start`, after the fork: the SDK's export thread does not survive
one) with its own resource (`process.pid`, `tabserve.process`: http or worker), so a trace shows which process
did what. The exporter speaks OTLP over HTTP/protobuf (the default) or gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL` or
`…_TRACES_PROTOCOL`); the sampler is the SDK's reading of `OTEL_TRACES_SAMPLER` (default: parent-based always-on).

What is traced: the request, a server span continuing the client's W3C `traceparent` (HTTP header or gRPC
metadata), current while it is handled (log lines carry its ids); in the worker (or the inline lane) each
request's queue wait from its admission, and per batch the batch (linked to every request in it), each ONNX
Runtime call and the answers' encoding. A sampled request's context travels to the worker in its `Job.trace` —
`(trace_id, span_id, admitted_at)` — so the worker's spans have the request span as parent. An exported span
costs 20–60 µs of Python (most of it the OTLP encoding), so steps are spans only where they take time or cross a
process: admission (microseconds) is the queue wait's start, encoding is one span per batch.
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
_recorder = None
"""Records this process's finished spans (`Recorder`), beside `tracer`."""

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_EPOCH_OFFSET_NS = 0
"""time.time_ns() − time.monotonic_ns(): jobs carry monotonic times (the same clock in every process), spans
want wall-clock nanoseconds."""


def wanted() -> bool:
    return any(os.environ.get(name) for name in ENDPOINTS) and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"


def start(role: str) -> None:
    """Start this process's SDK when tracing is configured (`role`: "http" or "worker"); idempotent."""
    global tracer, _recorder, _EPOCH_OFFSET_NS
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
    processor = BatchSpanProcessor(_exporter())  # its queue and delays: OTEL_BSP_*
    provider.add_span_processor(processor)
    atexit.register(provider.shutdown)  # export what is still queued
    _EPOCH_OFFSET_NS = time.time_ns() - time.monotonic_ns()
    tracer = provider.get_tracer("tabserve")
    _recorder = Recorder(processor, provider.resource, provider.id_generator)
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


def enter(span):
    """Make `span` the current one (in this task: each request has its own); returns what `leave` takes."""
    from opentelemetry import context
    from opentelemetry import trace as api

    return context.attach(api.set_span_in_context(span))


def leave(token) -> None:
    from opentelemetry import context

    context.detach(token)


def job_trace(span) -> tuple[int, int, float] | None:
    """What a job carries to the worker for a sampled request: its span's ids, and when it was queued."""
    if span is None or not span.is_recording():
        return None
    context = span.get_span_context()
    return context.trace_id, context.span_id, time.monotonic()


class Recorder:
    """Spans recorded once they are over, handed straight to the span processor that exports them.

    A live SDK span (`start_span` … `end`) costs about 11 µs here; a step whose start and end are both known when
    it is recorded (the queue wait, the ONNX Runtime call, the answers' encoding) needs none of that
    machinery: it is built finished, as the SDK's `ReadableSpan`, in about 1.5 µs, and exported the same way.
    Its parent is a sampled span of the same trace, which every standard sampler (parent-based, always-on, a
    trace-id ratio: the same trace id) samples too, so no sampling decision is skipped."""

    def __init__(self, processor, resource, ids):
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, Status, StatusCode

        self.processor, self.resource, self.ids = processor, resource, ids
        self.scope = InstrumentationScope("tabserve")
        self.finished, self.context, self.status = ReadableSpan, SpanContext, Status
        self.unset, self.error = Status(StatusCode.UNSET), StatusCode.ERROR

    def record(self, name: str, parent, start_ns: int, end_ns: int, attributes: dict | None = None,
               error: Exception | None = None) -> None:  # fmt: skip
        """A finished span under `parent` (a SpanContext), from `start_ns` to `end_ns` (wall-clock); its status
        is an error when the step raised `error`."""
        context = self.context(parent.trace_id, self.ids.generate_span_id(), False, parent.trace_flags,
                               parent.trace_state)  # fmt: skip
        status = self.unset if error is None else self.status(self.error, f"{type(error).__name__}: {error}")
        span = self.finished(name, context, parent, self.resource, attributes, status=status, start_time=start_ns,
                             end_time=end_ns, instrumentation_scope=self.scope)  # fmt: skip
        self.processor.on_end(span)


def _remote(trace: tuple[int, int, float]):
    """The SpanContext of the request span a job's `trace` names (made in the HTTP process)."""
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(trace[0], trace[1], is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))


@contextmanager
def batch(jobs, picked: float):
    """The worker's span of one batch, current while the block runs: a child of the first traced request, linked
    to every traced request, and the queue wait of each one (from `Gateway.submit` to `picked`)."""
    traced = [job for job in jobs if job.trace is not None] if tracer is not None else []
    if not traced:
        yield
        return
    from opentelemetry import trace as api
    from opentelemetry.trace import Link, NonRecordingSpan

    parents = [_remote(job.trace) for job in traced]
    end = wall_ns(picked)
    for job, parent in zip(traced, parents, strict=True):
        _recorder.record("queue wait", parent, wall_ns(job.trace[2]), end)
    attributes = {"tabserve.requests": len(jobs), "tabserve.rows": sum(job.rows for job in jobs)}
    first = api.set_span_in_context(NonRecordingSpan(parents[0]))
    links = [Link(parent) for parent in parents]
    span = tracer.start_span("batch", context=first, links=links, attributes=attributes, start_time=end)
    with api.use_span(span, end_on_exit=True):
        yield


@contextmanager
def span(name: str, attributes: dict | None = None):
    """A span under the current one (the batch's) when there is one being recorded, else nothing: recorded
    finished once the block is over (`Recorder`)."""
    if tracer is None:
        yield
        return
    from opentelemetry import trace as api

    parent = api.get_current_span()
    if not parent.is_recording():
        yield
        return
    start = time.time_ns()
    try:
        yield
    except Exception as e:
        _recorder.record(name, parent.get_span_context(), start, time.time_ns(), attributes, e)
        raise
    _recorder.record(name, parent.get_span_context(), start, time.time_ns(), attributes)


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span id in hex, for log lines; None when nothing is being traced."""
    if tracer is None:
        return None
    from opentelemetry import trace as api

    context = api.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
