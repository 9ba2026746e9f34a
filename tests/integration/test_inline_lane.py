"""The inline lane (service/dataplane/inline.py): small requests are answered by the HTTP process while the worker is
idle, larger ones and any arriving while the worker holds work go to the worker, and the lane follows hot reloads.

A stopped worker (SIGSTOP) makes the difference observable: only the lane can answer while it is stopped.
"""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_resilience import ROW, in_background, predict, stopped, wait_for, worker_pids
from tests.metrics_text import Scrape
from tests.serving import Server, republish


@pytest.fixture
def server(iris_repo):
    # One HTTP process: the lane's rule ("the only request in this process") is per process.
    process = Server(iris_repo, "--workers", "1", "--inline-max-rows", "16", "--poll-interval", "0.2",
                     "--http-processes", "1")  # fmt: skip
    wait_for(lambda: predict(process).status_code == 200 and bool(worker_pids(process)))
    yield process
    process.stop()


def test_small_requests_are_answered_while_the_worker_is_idle_and_large_ones_go_to_it(server):
    before = Scrape.of(server.url).sum("tabserve_rows_total")
    with stopped(worker_pids(server)[0]):
        assert predict(server, 16).status_code == 200  # the lane: the stopped worker could not have answered
        infer = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        oip = httpx.post(server.url + "/v2/models/iris/infer", json=infer, timeout=10)
        assert oip.status_code == 200 and oip.json()["outputs"][0]["shape"] == [1, 3]
        large, result = in_background(predict, server, 17, **{"x-request-timeout-ms": "300"})
        large.join(1.0)
        assert large.is_alive()  # queued at the stopped worker
    large.join(10)
    assert result[0].status_code == 503 and result[0].json()["reason"] == "deadline_exceeded"
    scrape = Scrape.of(server.url)
    assert scrape.sum("tabserve_rows_total") == before + 17  # run and counted like a worker's; the 17 never ran
    assert scrape.sum("tabserve_requests_total", code="200") >= 2


def test_the_lane_steps_aside_while_the_worker_holds_work(server):
    with stopped(worker_pids(server)[0]):
        held, held_result = in_background(predict, server, 17)
        wait_for(lambda: Scrape.of(server.url).sum("tabserve_requests_in_flight") == 1)
        small, small_result = in_background(predict, server, 1)
        small.join(1.0)
        assert small.is_alive()  # queued behind the held request, not run inline
    held.join(10)
    small.join(10)
    assert held_result[0].status_code == 200 and small_result[0].status_code == 200


def test_the_lane_serves_a_new_version_once_it_has_verified_it(server, iris_repo, trained):
    republish(trained[0], iris_repo, "iris")

    def lane_answers() -> int | None:  # the version the lane answers with, None while it cannot
        with stopped(worker_pids(server)[0]):
            try:
                return predict(server, timeout=1).json()["version"]
            except httpx.ReadTimeout:  # queued at the stopped worker (the lane is still loading)
                return None

    wait_for(lambda: lane_answers() == 2)
    assert predict(server).json()["version"] == 2
