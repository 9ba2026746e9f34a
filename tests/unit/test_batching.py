import numpy as np
import pytest

from service.batching import Job, NoWaitBatchedLoop, plan_calls, run_calls
from service.transport import Channel


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
def queue():
    return Channel()  # the queue the server really uses between its HTTP process and workers


def test_loop_takes_what_is_queued_without_waiting_and_stops_at_the_row_budget(queue):
    for i in range(5):
        queue.put((0, f"uid{i}", 0.0, job("a", 3)))
    loop = NoWaitBatchedLoop(max_batch_rows=7, max_batch_delay=0.0)
    first = list(loop.take(queue))
    assert [uid for _, uid, _, _ in first] == ["uid0", "uid1", "uid2"]  # 9 rows >= 7: stop
    second = list(loop.take(queue))
    assert [uid for _, uid, _, _ in second] == ["uid3", "uid4"]  # the queue is empty: return at once
