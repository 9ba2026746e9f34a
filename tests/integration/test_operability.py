"""Logs, traces, exemplars and refusals that reach their clients, against a real server and a real OTLP receiver.

The receiver (tests/otlp.py) decodes what the server's exporters send with opentelemetry-proto, as a Collector
would; the access log is read from the server's stdout; refusals are sent over raw sockets.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from tests.otlp import Receiver
from tests.serving import Server

ROW = [5.1, 3.5, 1.4, 0.2]


def traceparent(trace_id: str, span_id: str = "b7ad6b7169203331") -> str:
    return f"00-{trace_id}-{span_id}-01"


def json_lines(server: Server) -> list[dict]:
    lines = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def access_lines(server: Server) -> list[dict]:
    return [line for line in json_lines(server) if "status" in line and "request_id" in line]


@pytest.fixture(scope="module")
def traced(repo):
    """A server exporting every span to a real OTLP/HTTP receiver, with the JSON access log and JSON logs, and
    the inline lane off (so that requests cross to the worker)."""
    with Receiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
               "TABSERVE_ACCESS_LOG": "json", "TABSERVE_LOG_FORMAT": "json"}  # fmt: skip
        server = Server(repo, "--http-processes", "1", "--workers", "1", "--inline-max-rows", "0",
                        "--default-model", "iris", env=env)  # fmt: skip
        yield server, receiver
        server.stop()


def test_a_rest_request_is_traced_across_the_http_process_and_the_worker(traced):
    server, receiver = traced
    trace_ids = [os.urandom(16).hex() for _ in range(3)]
    for trace_id in trace_ids:
        answer = httpx.post(server.url + "/predict", json={"instances": [ROW] * 3},
                            headers={"traceparent": traceparent(trace_id)})  # fmt: skip
        assert answer.status_code == 200
    receiver.wait_for(lambda spans: all(len({s.process for s in spans if s.trace_id == t}) == 2 for t in trace_ids))
    for trace_id in trace_ids:
        spans = receiver.wait_for(
            lambda _, t=trace_id: {"encode answers", "queue wait"} <= {s.name for s in receiver.trace(t)}
        )
        spans = receiver.trace(trace_id)
        assert len(spans) >= 3
        ids = {span.span_id for span in spans}
        root = [span for span in spans if span.parent_span_id == "b7ad6b7169203331"]
        assert [span.name for span in root] == ["POST /predict"], spans
        assert root[0].kind == 2  # SPAN_KIND_SERVER
        assert root[0].attributes["tabserve.model"] == "iris" and root[0].attributes["http.response.status_code"] == 200
        assert all(span.parent_span_id in ids for span in spans if span is not root[0]), "a parent is missing"
        assert len({span.pid for span in spans}) >= 2
        assert {span.process for span in spans} == {"http", "worker"}
        worker = [span for span in spans if span.process == "worker"]
        assert {"queue wait", "batch", "encode answers"} <= {span.name for span in worker}
        assert all(span.start_ns <= span.end_ns for span in spans)
    batches = [span for span in receiver.spans if span.name == "batch" and span.trace_id in trace_ids]
    assert batches and all(batch.links for batch in batches)  # linked to the requests it ran
    calls = [span for span in receiver.spans if span.name == "onnxruntime.run" and span.trace_id in trace_ids]
    assert calls and all(call.parent_span_id in {b.span_id for b in batches} for call in calls)


def test_a_grpc_call_continues_the_clients_trace(traced):
    server, receiver = traced
    trace_id = os.urandom(16).hex()
    client = tgrpc.InferenceServerClient(server.grpc_address)
    features = tgrpc.InferInput("features", [1, 4], "FP32")
    features.set_data_from_numpy(np.array([ROW], dtype=np.float32))
    client.infer("iris", [features], headers={"traceparent": traceparent(trace_id, "00f067aa0ba902b7")})
    receiver.wait_for(lambda _: {"http", "worker"} <= {s.process for s in receiver.trace(trace_id)})  # each process
    spans = receiver.trace(trace_id)  # exports on its own schedule
    root = [span for span in spans if span.parent_span_id == "00f067aa0ba902b7"]
    assert [span.name for span in root] == ["inference.GRPCInferenceService/ModelInfer"]


def test_the_access_log_has_a_json_line_per_request_over_both_protocols(traced):
    server, _ = traced
    trace_id = os.urandom(16).hex()
    ok = httpx.post(
        server.url + "/v2/models/iris/infer",
        headers={"traceparent": traceparent(trace_id)},
        json={"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": ROW * 2}]},
    )
    missing = httpx.post(server.url + "/v1/models/nope:predict", json={"instances": [ROW]})
    assert (ok.status_code, missing.status_code) == (200, 404)
    features = tgrpc.InferInput("features", [1, 4], "FP32")
    features.set_data_from_numpy(np.array([ROW], dtype=np.float32))
    tgrpc.InferenceServerClient(server.grpc_address).infer("iris", [features])  # its line too, run alone or not
    wanted = {ok.headers["x-request-id"], missing.headers["x-request-id"]}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (
        wanted <= {line["request_id"] for line in access_lines(server)}
        and any(line["method"] == "gRPC" for line in access_lines(server))
    ):
        time.sleep(0.1)
    lines = {line["request_id"]: line for line in access_lines(server)}
    line = lines[ok.headers["x-request-id"]]
    assert line["trace_id"] == trace_id and re.fullmatch("[0-9a-f]{16}", line["span_id"])
    assert (line["status"], line["model"], line["version"], line["rows"]) == (200, "iris", 2, 2)
    assert line["route"] == "/v2/models/{name}/infer" and line["method"] == "POST"
    assert line["queue_ms"] >= 0 and line["inference_ms"] > 0 and line["duration_ms"] > 0
    assert line["bytes_in"] > 0 and line["bytes_out"] == len(ok.content) and line["client"].startswith("127.0.0.1:")
    refused = lines[missing.headers["x-request-id"]]
    assert (refused["status"], refused["reason"], refused["route"]) == (
        404,
        "model_not_found",
        "/v1/models/{name}:predict",
    )
    grpc_lines = [line for line in lines.values() if line["method"] == "gRPC"]
    assert grpc_lines and grpc_lines[0]["route"] == "inference.GRPCInferenceService/ModelInfer"


def test_a_refused_grpc_call_is_logged_with_its_reason(traced):
    server, _ = traced
    features = tgrpc.InferInput("features", [1, 4], "FP32")
    features.set_data_from_numpy(np.array([ROW], dtype=np.float32))
    with pytest.raises(tgrpc.InferenceServerException):
        tgrpc.InferenceServerClient(server.grpc_address).infer("nope", [features], request_id="refused-grpc-call")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "refused-grpc-call" not in {
        line["request_id"] for line in access_lines(server)
    }:
        time.sleep(0.1)
    (line,) = [line for line in access_lines(server) if line["request_id"] == "refused-grpc-call"]
    assert (line["method"], line["status"], line["reason"]) == ("gRPC", 404, "model_not_found")


def test_server_log_lines_are_json(traced):
    server, _ = traced
    lines = [line for line in server.output().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), [line for line in lines if line[0] != "{"][:3]
    records = json_lines(server)
    assert any(r.get("logger") == "tabserve" and r.get("level") == "INFO" for r in records)


def test_latency_buckets_carry_trace_ids_as_exemplars(traced):
    server, _ = traced
    trace_id = os.urandom(16).hex()
    httpx.post(server.url + "/predict", json={"instances": [ROW]}, headers={"traceparent": traceparent(trace_id)})
    accept = {"accept": "application/openmetrics-text; version=1.0.0"}
    deadline, text = time.monotonic() + 5, ""
    while time.monotonic() < deadline and trace_id not in text:
        time.sleep(0.2)
        text = httpx.get(server.url + "/metrics", headers=accept).text
    line = next(line for line in text.splitlines() if trace_id in line)
    assert line.startswith("tabserve_request_duration_seconds_bucket{") and 'model="iris"' in line, line
    assert f'# {{trace_id="{trace_id}"}}' in line
    assert "trace_id" not in httpx.get(server.url + "/metrics").text  # the classic text format has no exemplars


def test_without_an_endpoint_nothing_is_traced_and_no_access_log(server):
    answer = httpx.post(server.url + "/predict", json={"instances": [ROW]},
                        headers={"traceparent": traceparent(os.urandom(16).hex())})  # fmt: skip
    assert answer.status_code == 200
    assert "tracing on" not in server.output()
    assert answer.headers["x-request-id"] not in server.output()


def refused_upload(url: str, declared: int, send: int, extra: bytes = b"") -> tuple[bytes, list[str]]:
    """POST a body of `declared` bytes, sending `send` of them while reading the answer: (answer, send errors)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n"
            ).encode() + extra + b"\r\n"  # fmt: skip
    errors: list[str] = []

    def upload():
        try:
            sock.sendall(head)
            chunk = b" " * 65536
            for _ in range(send // len(chunk)):
                sock.sendall(chunk)
        except OSError as e:
            errors.append(type(e).__name__)

    sender = threading.Thread(target=upload)
    sender.start()
    received = b""
    try:
        sock.settimeout(20)
        while chunk := sock.recv(65536):
            received += chunk
    except OSError as e:
        errors.append("recv " + type(e).__name__)
    sender.join(30)
    sock.close()
    return received, errors


def test_a_refusal_before_the_body_is_read_reaches_the_client(repo):
    """413 sent before reading a 6 MB body the client keeps sending: without a lingering close the kernel resets
    the connection and the client loses the answer; with it, the client reads it all and no reset happens."""
    server = Server(repo, "--http-processes", "1", "--workers", "1", "--max-body-bytes", str(1 << 20))
    try:
        for _ in range(5):
            answer, errors = refused_upload(server.url, 6 << 20, 6 << 20)
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
            assert b'"reason":"body_too_large"' in answer and b"connection: close" in answer.lower()
            assert errors == []
    finally:
        server.stop()


def test_a_client_that_never_stops_sending_is_cut_off(repo):
    """The lingering close is bounded: a client sending on after its refusal is closed within seconds."""
    server = Server(repo, "--http-processes", "1", "--workers", "1", "--max-body-bytes", str(1 << 20))
    try:
        started = time.monotonic()
        answer, errors = refused_upload(server.url, 1 << 40, 1 << 36)  # it would send 64 GiB
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert errors  # cut off: the send failed (reset or broken pipe) once the server closed
        assert time.monotonic() - started < 30
    finally:
        server.stop()
