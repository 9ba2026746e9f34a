"""Several HTTP processes (`--http-processes 2`): both take connections, metrics stay exact, a new version is
served by both, a worker's death is handled by both, a dead HTTP process is replaced (one of two, or the only
one), and SIGTERM leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from tests.metrics_text import Scrape
from tests.serving import Server, republish

ROW = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
REQUESTS = 400


@pytest.fixture
def server(iris_repo, tmp_path):
    process = Server(iris_repo, "--http-processes", "2", "--workers", "2", "--poll-interval", "0.2",
                     "--metrics-dir", str(tmp_path / "metrics"))  # fmt: skip
    yield process
    process.stop()


def predict_on_fresh_connections(url: str, count: int, threads: int = 16) -> list[tuple[int, int | None]]:
    """(status, version) of `count` requests, each on a new connection, `threads` at a time."""

    def one(_) -> tuple[int, int | None]:
        response = httpx.post(url + "/v1/models/iris/predict", json=ROW, timeout=30)
        return response.status_code, response.json().get("version")

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def http_process_pids(server: Server) -> set[int]:
    """The HTTP processes: those whose dispatcher logged taking up a worker (service/engine/dispatch.py)."""
    return {int(pid) for pid in re.findall(r"tabserve.dispatch \[(\d+)\] inference worker", server.output())}


def test_both_processes_serve_and_metrics_stay_exact(server, tmp_path):
    deadline = time.monotonic() + 30
    while len(pids := http_process_pids(server)) < 2 and time.monotonic() < deadline:  # each adopts the workers
        time.sleep(0.1)
    assert len(pids) == 2, pids
    answers = predict_on_fresh_connections(server.url, REQUESTS)
    assert answers == [(200, 1)] * REQUESTS
    # prometheus-client writes one file per process that recorded a value: both HTTP processes counted requests
    counted = {int(f.stem.rsplit("_", 1)[1]) for f in (tmp_path / "metrics").glob("counter_*.db")}
    assert pids <= counted, (pids, counted)
    scrape = Scrape.of(server.url)
    assert scrape.sum("tabserve_requests_total", model="iris", code="200") == REQUESTS
    assert scrape.sum("tabserve_rows_total", model="iris") == REQUESTS
    assert scrape.sum("tabserve_requests_in_flight") == 0


def test_request_ids_are_unique_across_processes(server):
    """Each HTTP process draws its own random id prefix: ids never collide in logs gathered from all of them."""

    def request_id(_) -> str:
        return httpx.post(server.url + "/v1/models/iris/predict", json=ROW, timeout=30).headers["x-request-id"]

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(request_id, range(200)))
    assert len(set(ids)) == len(ids)
    assert len({i[:16] for i in ids}) == 2, "both processes answered, each with its own prefix"


def test_grpc_is_served_by_both_processes_on_one_port(server):
    """Each HTTP process runs its own gRPC server on the shared port (SO_REUSEPORT): new connections reach both."""
    row = np.array([ROW["instances"][0]], dtype=np.float32)

    def infer(_) -> int:
        with tgrpc.InferenceServerClient(server.grpc_address) as client:  # a new channel: a new connection
            tensor = tgrpc.InferInput("features", list(row.shape), "FP32")
            tensor.set_data_from_numpy(row)
            return client.infer("iris", [tensor]).as_numpy("probabilities").shape[0]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(infer, range(64))) == [1] * 64
    scrape = Scrape.of(server.url)
    assert scrape.sum("tabserve_requests_total", endpoint="grpc_infer", code="200") == 64


def test_a_new_version_is_served_by_both(server, iris_repo, trained):
    republish(trained[0], iris_repo, "iris")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answers = predict_on_fresh_connections(server.url, 64)
        if {version for _, version in answers} == {2}:
            break
        time.sleep(0.2)
    assert answers == [(200, 2)] * 64
    assert Scrape.of(server.url).sum("tabserve_model_load_failures_total") == 0


def test_a_killed_worker_is_replaced_for_both_processes(server):
    def workers() -> set[int]:
        return {int(pid) for pid in re.findall(r"inference worker \d+ \(pid (\d+)\) takes", server.output())}

    deadline = time.monotonic() + 30
    while len(workers()) < 2 and time.monotonic() < deadline:  # ready means one worker is up; wait for both
        time.sleep(0.1)
    assert len(workers()) == 2, workers()
    os.kill(min(workers()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # requests in flight at the kill may get 503; then every answer is 200
        statuses = {status for status, _ in predict_on_fresh_connections(server.url, 64)}
        if statuses == {200}:
            break
        assert statuses <= {200, 503}
        time.sleep(0.2)
    assert statuses == {200}
    deadline = time.monotonic() + 30
    while Scrape.of(server.url).sum("tabserve_worker_restarts_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Scrape.of(server.url).sum("tabserve_worker_restarts_total") == 1


def wait_until_all_answer_200(url: str) -> None:
    """Connections cut by a killed HTTP process fail; answers before its replacement adopts the workers may be 503."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            statuses = {status for status, _ in predict_on_fresh_connections(url, 64)}
        except httpx.TransportError:
            statuses = set()
        if statuses == {200}:
            return
        assert statuses <= {200, 503}
        time.sleep(0.2)
    raise AssertionError(f"still answering {statuses}")


def test_a_killed_http_process_is_replaced_and_both_serve_again(server):
    deadline = time.monotonic() + 30
    while len(pids := http_process_pids(server)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pids) == 2, pids
    os.kill(min(pids), signal.SIGKILL)
    wait_until_all_answer_200(server.url)
    deadline = time.monotonic() + 30
    while len(after := http_process_pids(server)) < 3 and time.monotonic() < deadline:  # the replacement adopted
        time.sleep(0.1)
    assert after - pids and max(pids) in after, after
    answers = predict_on_fresh_connections(server.url, REQUESTS)
    assert answers == [(200, 1)] * REQUESTS
    scrape = Scrape.of(server.url)
    assert scrape.sum("tabserve_http_process_restarts_total") == 1
    assert scrape.sum("tabserve_worker_restarts_total") == 0
    assert scrape.sum("tabserve_requests_in_flight") == 0  # the dead process's live gauge is dropped


def test_the_only_http_process_is_replaced_and_serves_the_repository_as_it_is_now(iris_repo, trained):
    """A replacement is forked from the main process, whose registry dates from startup: it looks at once."""
    process = Server(iris_repo, "--http-processes", "1", "--workers", "1", "--poll-interval", "3600")
    try:
        assert httpx.post(process.url + "/v1/models/iris/predict", json=ROW).json()["version"] == 1
        republish(trained[0], iris_repo, "iris")  # the running process would see it only an hour from now
        (pid,) = http_process_pids(process)
        os.kill(pid, signal.SIGKILL)
        wait_until_all_answer_200(process.url)
        assert predict_on_fresh_connections(process.url, 16) == [(200, 2)] * 16
        assert Scrape.of(process.url).sum("tabserve_http_process_restarts_total") == 1
        assert process.process.poll() is None
    finally:
        process.stop()  # raises if a process is left behind: the replacement is stopped like the others


def test_in_explicit_mode_the_replacement_repeats_the_load_and_unload_requests(iris_repo, trained, tmp_path):
    """Models loaded (and unloaded) through the repository API since startup stay so when the HTTP process is
    replaced: the replacement is forked from the startup view, and repeats the requests before it serves. Those
    an earlier server was sent (its record left in a metrics folder given by the user) are not repeated."""
    republish(trained[0], iris_repo, "flowers")
    republish(trained[0], iris_repo, "tulips")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "model-control.json").write_text('{"tulips": "unload"}')
    process = Server(iris_repo, "--model-control-mode", "explicit", "--workers", "1",
                     "--metrics-dir", str(tmp_path / "metrics"))  # fmt: skip
    url = process.url
    try:
        republish(trained[0], iris_repo, "iris")  # v2, served once loaded
        assert httpx.post(url + "/v2/repository/models/iris/load").status_code == 200
        assert httpx.post(url + "/v2/repository/models/flowers/unload").status_code == 200
        (pid,) = http_process_pids(process)
        os.kill(pid, signal.SIGKILL)
        wait_until_all_answer_200(url)
        assert predict_on_fresh_connections(url, 16) == [(200, 2)] * 16
        flowers = httpx.post(url + "/v1/models/flowers/predict", json=ROW, timeout=30)
        assert flowers.status_code == 503 and "unloaded" in flowers.json()["error"]
        assert httpx.post(url + "/v1/models/tulips/predict", json=ROW, timeout=30).status_code == 200
        assert Scrape.of(url).sum("tabserve_http_process_restarts_total") == 1
    finally:
        process.stop()
