"""Overload, deadlines, abandoned requests, dead workers and slow clients, against a real server.

To hold work at a worker deterministically, the tests stop the worker process (SIGSTOP) and let it go again
(SIGCONT): jobs then wait in its pipe exactly as they would behind a long batch.
"""

import contextlib
import os
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from bundle.manifest import Manifest
from tests.metrics_text import Scrape
from tests.serving import Server, free_port

ROW = [5.1, 3.5, 1.4, 0.2]
ANNOUNCED = re.compile(r"inference worker (\d+) \(pid (\d+)\) takes requests")


def worker_pids(server: Server) -> dict[int, int]:
    """The pid each worker announced last (the HTTP process logs each adoption)."""
    return {int(index): int(pid) for index, pid in ANNOUNCED.findall(server.output())}


@contextlib.contextmanager
def stopped(pid: int):
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed meanwhile, and already reaped by the monitor
            os.kill(pid, signal.SIGCONT)


def predict(server: Server, rows: int = 1, timeout: float = 30, **headers: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/models/iris/predict", json={"instances": [ROW] * rows}, headers=headers, timeout=timeout
    )


def in_background(function, *args, **kwargs) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, result


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def rows_run(server: Server) -> float:
    return Scrape.of(server.url).sum("tabserve_rows_total")


@pytest.fixture(scope="module")
def single(repo):
    """One worker, a queue bound of 5 rows, and a byte bound equal to the largest body (4 KiB), all in one HTTP
    process (several split the bounds); every request goes to the worker (no inline lane: these tests hold
    requests in a stopped worker's queue)."""
    process = Server(repo, "--workers", "1", "--max-queue-rows", "5", "--max-body-bytes", "4096",
                     "--max-pending-bytes", "4096", "--inline-max-rows", "0", "--http-processes", "1")  # fmt: skip
    predict(process)  # the HTTP process has adopted the worker
    yield process
    process.stop()


def test_past_the_row_bound_requests_are_refused_at_once_with_retry_after(single):
    worker = worker_pids(single)[0]
    with stopped(worker):
        held, result = in_background(predict, single, 2)
        wait_for(lambda: Scrape.of(single.url).sum("tabserve_requests_in_flight") == 1)
        started = time.monotonic()
        refused = predict(single, 4)  # 2 + 4 > 5
        elapsed = time.monotonic() - started
        fits = in_background(predict, single, 3)  # 2 + 3 = 5: queued
    held.join(10)
    fits[0].join(10)
    assert refused.status_code == 503 and elapsed < 1.0
    assert refused.json()["reason"] == "overloaded" and "TABSERVE_MAX_QUEUE_ROWS" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    assert result[0].status_code == 200 and fits[1][0].status_code == 200
    assert predict(single, 5).status_code == 200  # an idle worker takes the whole bound
    assert Scrape.of(single.url).sum("tabserve_requests_dropped_total", reason="overloaded") == 1


def test_an_explained_row_counts_as_the_path_points_it_runs(single, repo):
    """One explained row is `steps` rows of model work: with it queued, one more row passes the bound of 5."""
    steps = Manifest.read(repo / "iris" / "2").explanation.steps  # v2 answers by default (v3 is broken)
    worker = worker_pids(single)[0]
    with stopped(worker):
        held, result = in_background(
            httpx.post, single.url + "/v1/models/iris:explain", json={"instances": [ROW]}, timeout=30
        )
        wait_for(lambda: Scrape.of(single.url).sum("tabserve_requests_in_flight") == 1)
        refused = predict(single)
    held.join(10)
    assert result[0].status_code == 200 and result[0].json()["explanations"]
    assert refused.status_code == 503 and f"{steps} rows of work are queued" in refused.json()["error"]


def test_bodies_are_refused_from_their_headers_when_the_byte_bound_is_held(single):
    """A client trickling a 4 KiB body (announced in full) holds the whole byte budget: the next body is
    refused unread."""
    with socket.create_connection(("127.0.0.1", single.port)) as slow:
        slow.sendall(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{"
        )
        wait_for(lambda: Scrape.of(single.url).sum("tabserve_requests_in_flight") == 1)
        refused = predict(single)
        assert refused.status_code == 503 and "TABSERVE_MAX_PENDING_BYTES" in refused.json()["error"]
        assert refused.headers["retry-after"].isdigit()
    wait_for(lambda: Scrape.of(single.url).sum("tabserve_requests_in_flight") == 0)
    assert predict(single).status_code == 200  # the budget came back when the slow client left


def test_a_request_past_its_deadline_is_never_computed(single):
    worker = worker_pids(single)[0]
    before = rows_run(single)
    with stopped(worker):
        header, header_result = in_background(predict, single, 1, **{"x-request-timeout-ms": "200"})
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        body["parameters"] = {"timeout": 200_000}  # µs, Triton's semantics
        oip, oip_result = in_background(httpx.post, single.url + "/v2/models/iris/infer", json=body, timeout=30)
        time.sleep(0.5)
    header.join(10)
    oip.join(10)
    for response in (header_result[0], oip_result[0]):
        assert response.status_code == 503 and response.json()["reason"] == "deadline_exceeded"
        assert "timeout expired before inference" in response.json()["error"]
        assert response.headers["retry-after"] == "1"
    scrape = Scrape.of(single.url)
    assert scrape.sum("tabserve_rows_total") == before  # neither reached the model
    assert scrape.sum("tabserve_requests_dropped_total", reason="deadline_exceeded") == 2
    bad = predict(single, **{"x-request-timeout-ms": "soon"})
    assert bad.status_code == 400 and bad.json()["field"] == "x-request-timeout-ms"


def test_a_request_whose_client_left_is_never_computed(single):
    worker = worker_pids(single)[0]
    before = rows_run(single)
    with stopped(worker):
        with pytest.raises(httpx.ReadTimeout):
            predict(single, 1, timeout=0.3)  # the client gives up and closes its connection
        time.sleep(0.3)  # the HTTP process sees the disconnect and cancels the job on the worker's board
    wait_for(lambda: Scrape.of(single.url).sum("tabserve_requests_dropped_total", reason="cancelled") == 1)
    assert rows_run(single) == before
    assert predict(single).status_code == 200


@pytest.fixture(scope="module")
def pair(repo):
    # One HTTP process: which worker is least loaded is each process's own view.
    process = Server(repo, "--workers", "2", "--inline-max-rows", "0", "--http-processes", "1")
    wait_for(lambda: len(worker_pids(process)) == 2 or predict(process).status_code != 200)
    yield process
    process.stop()


def test_a_dead_worker_fails_what_it_held_at_once_is_replaced_and_the_other_keeps_serving(pair):
    wait_for(lambda: len(worker_pids(pair)) == 2)
    victim = worker_pids(pair)[0]
    with stopped(victim):
        held, result = in_background(predict, pair)  # both idle: worker 0 takes it, and holds it
        wait_for(lambda: Scrape.of(pair.url).sum("tabserve_requests_in_flight") == 1)
        served_meanwhile = [predict(pair).status_code for _ in range(5)]  # worker 1 is the less loaded
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        held.join(10)
        failed_after = time.monotonic() - started
    assert served_meanwhile == [200] * 5
    assert result[0].status_code == 503 and result[0].json()["reason"] == "worker_unavailable"
    assert failed_after < 1.0
    wait_for(lambda: worker_pids(pair)[0] != victim)
    assert pair.process.poll() is None
    assert all(predict(pair).status_code == 200 for _ in range(10))
    scrape = Scrape.of(pair.url)
    assert scrape.sum("tabserve_worker_restarts_total") == 1
    assert scrape.sum("tabserve_requests_dropped_total", reason="worker_unavailable") == 1


@pytest.fixture(scope="module")
def strict(repo):
    process = Server(repo, "--header-timeout", "1", "--body-timeout", "1", "--max-header-bytes", "2048")
    yield process
    process.stop()


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_trickling_and_silent_connections_are_closed_after_the_header_deadline(strict):
    with (
        socket.create_connection(("127.0.0.1", strict.port)) as silent,
        socket.create_connection(("127.0.0.1", strict.port)) as trickling,
    ):
        trickling.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        started = time.monotonic()
        trickling.sendall(b"x-a: 1\r\n")
        assert read_all(trickling).startswith(b"HTTP/1.1 408 ")
        assert read_all(silent) == b""  # closed without a word: it never said anything
        assert time.monotonic() - started < 4
    assert httpx.get(strict.url + "/v2/health/live").status_code == 200


def test_a_body_that_does_not_arrive_in_time_closes_its_connection(strict):
    with socket.create_connection(("127.0.0.1", strict.port)) as slow:
        slow.sendall(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 99\r\n\r\n{"
        )
        assert read_all(slow) == b""
    wait_for(lambda: Scrape.of(strict.url).sum("tabserve_requests_in_flight") == 0)


def test_oversized_headers_are_431(strict):
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 4096 + b"\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"error"' in answer


def test_the_health_port_answers_probes_and_nothing_else(repo):
    port = free_port()
    process = Server(repo, "--health-port", str(port))
    try:
        health = f"http://127.0.0.1:{port}"
        assert httpx.get(health + "/v2/health/live").json() == {"live": True}
        assert httpx.get(health + "/v2/health/ready").json() == {"ready": True}
        assert "tabserve_requests_in_flight" in httpx.get(health + "/metrics").text
        refused = httpx.post(health + "/predict", json={"instances": [ROW]})
        assert refused.status_code == 404 and "serves only" in refused.json()["error"]
        assert predict(process).status_code == 200  # the main port is unchanged
    finally:
        process.stop()
