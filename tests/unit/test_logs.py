"""The access log never blocks a request: a stuck sink drops lines and counts them; JSON lines parse."""

import io
import json
import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter

from service.core import logs, tracing


class Blocked(io.StringIO):
    """A stdout nobody reads: every write waits until released."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def write(self, text):
        self.release.wait()
        return super().write(text)


def test_a_stuck_sink_drops_and_counts_lines_and_never_blocks_the_writer():
    dropped = Counter("dropped", "test", registry=CollectorRegistry())
    sink = Blocked()
    access = logs.AccessLog(bound=10, dropped=dropped, stream=sink)
    writer = threading.Thread(target=lambda: [access.write({"request_id": str(n), "status": 200}) for n in range(1000)])
    writer.start()
    writer.join(10)
    assert not writer.is_alive()  # it finished while the sink was still blocked: appends only
    assert dropped._value.get() >= 1000 - 10 - 1  # all but the bound (and the line the thread holds)
    sink.release.set()
    access.close()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert lines and all(line["status"] == 200 and "time" in line for line in lines)
    assert len(lines) + dropped._value.get() == 1000


def test_json_server_logs_carry_level_logger_and_message(capsys):
    logs.configure("info", "json")
    try:
        logging.getLogger("tabserve.test").warning("disk %s", "full")
        record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        logs.configure("info", "text")
    assert (record["level"], record["logger"], record["message"]) == ("WARNING", "tabserve.test", "disk full")
    assert "time" in record and "process" in record


def test_tracing_is_off_without_an_otlp_endpoint(monkeypatch):
    for name in tracing.ENDPOINTS:
        monkeypatch.delenv(name, raising=False)
    assert not tracing.wanted()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing.wanted()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.wanted()


def test_a_log_line_written_while_a_request_span_is_current_names_its_trace(monkeypatch, capsys):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # the span is never exported here
    monkeypatch.setattr(tracing, "tracer", None)  # restored after the test: other tests run untraced
    monkeypatch.setattr(tracing, "_recorder", None)
    tracing.start("http")
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    span = tracing.request_span("POST /predict", {b"traceparent": traceparent}, time.monotonic(), {})
    logs.configure("info", "json")
    try:
        token = tracing.enter(span)  # as Telemetry.opened does for every traced request
        logging.getLogger("tabserve.test").warning("inside")
        tracing.leave(token)
        logging.getLogger("tabserve.test").warning("outside")
        inside, outside = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines()[-2:])
    finally:
        logs.configure("info", "text")
    assert inside["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x") != "00f067aa0ba902b7"
    assert "trace_id" not in outside
