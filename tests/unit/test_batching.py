import pickle
import time

import numpy as np
import pytest

from service.core.job import Job
from service.engine.batching import NoWaitBatchedLoop, drop_reason, plan_calls, run_calls
from service.engine.links import CANCELLED, Wiring


def job(model, rows, version=1, start=0.0):
    features = (np.arange(rows, dtype=np.float32)[:, None] + start) * np.ones((1, 2), np.float32)
    return Job("predict", model, version, features, "id")


def test_jobs_share_calls_per_model_version_within_the_row_budget():
    jobs = [job("a", 3), job("b", 2), job("a", 4), job("a", 1, version=2)]
    calls = plan_calls(jobs, max_rows=8)
    assert [(c.model, c.version, c.rows, c.parts) for c in calls] == [
        ("a", 1, 7, [(0, 0, 3), (2, 0, 4)]),
        ("b", 1, 2, [(1, 0, 2)]),
        ("a", 2, 1, [(3, 0, 1)]),
    ]


def test_a_job_larger_than_the_budget_is_split_across_calls():
    calls = plan_calls([job("a", 2), job("a", 10)], max_rows=4)
    assert [c.parts for c in calls] == [[(0, 0, 2), (1, 0, 2)], [(1, 2, 6)], [(1, 6, 10)]]


def test_results_are_reassembled_per_job_and_a_failing_call_fails_only_its_jobs():
    jobs = [job("a", 3), job("bad", 2), job("a", 5, start=100)]

    def predict(model, version, rows):
        if model == "bad":
            raise RuntimeError("boom")
        return rows * 2

    results = run_calls(jobs, plan_calls(jobs, max_rows=4), predict)
    assert np.array_equal(results[0], jobs[0].features * 2)
    assert isinstance(results[1], RuntimeError)
    assert np.array_equal(results[2], jobs[2].features * 2)


@pytest.fixture
def port():
    """A worker's real end of its links, in this process, with two HTTP processes' links feeding it."""
    wiring = Wiring(2, 1)
    return wiring, wiring.port(0)


def queue(wiring, http_process, slot, job):
    wiring.links[http_process][0].requests_writer.send_bytes(pickle.dumps((slot, job)))


def test_loop_takes_what_is_queued_without_waiting_and_stops_at_the_row_budget(port):
    wiring, worker = port
    for i in range(5):
        queue(wiring, i % 2, i, job("a", 3))
    loop = NoWaitBatchedLoop(max_batch_rows=7, max_batch_delay=0.0)
    first = loop.take(worker)
    assert sorted(slot for _, slot, _ in first) == [0, 1, 2, 3]  # one per link per look: 6 rows, then 12 >= 7
    second = loop.take(worker)
    assert [(link, slot) for link, slot, _ in second] == [(0, 4)]  # what is left, at once


def test_cancelled_and_expired_jobs_are_not_run(port):
    wiring, worker = port
    fresh = job("a", 1)._replace(deadline=time.monotonic() + 60)
    late = job("a", 1)._replace(deadline=time.monotonic() - 1)
    wiring.links[0][0].board[7] = CANCELLED
    assert drop_reason(worker, 0, 7, fresh) == "cancelled"
    assert drop_reason(worker, 0, 8, late) == "deadline_exceeded"
    assert drop_reason(worker, 0, 8, fresh) is None
