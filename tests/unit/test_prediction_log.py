"""The prediction log's settings, its SQLite store (records, feedback, retention) and its writer thread (a
database that is gone never blocks `record`; rows beyond the buffer are dropped and counted; writing resumes)."""

import time

import numpy as np
import pytest

from service.core import metrics
from service.core.job import Job
from service.core.log_policy import LogPolicy, parse_retention, parse_sample, parse_url
from service.predictions.store import Store
from service.predictions.writer import PredictionLog, sampled

CLASSES, FEATURES = ["a", "b", "c"], ["x", "y"]


def test_settings_parse_urls_samples_and_retention(tmp_path):
    assert parse_url("off", tmp_path) == ("off", "")
    assert parse_url("sqlite://", tmp_path) == ("sqlite", str(tmp_path / "predictions.db"))
    assert parse_url("sqlite:///var/log.db", tmp_path) == ("sqlite", "var/log.db")
    assert parse_url("sqlite:////abs/log.db", tmp_path) == ("sqlite", "/abs/log.db")
    assert parse_url("postgresql://u@h/db", tmp_path) == ("postgresql", "postgresql://u@h/db")
    with pytest.raises(ValueError, match="expected 'off'"):
        parse_url("mysql://x", tmp_path)
    assert parse_sample("1") == (1.0, {})
    assert parse_sample("digits=0.05,*=0.5") == (0.5, {"digits": 0.05})
    with pytest.raises(ValueError, match="from 0 to 1"):
        parse_sample("iris=2")
    assert parse_retention("30d,5000rows") == (30 * 86400, 5000)
    assert parse_retention("12h") == (12 * 3600, None)
    assert parse_retention("none") == (None, None)
    with pytest.raises(ValueError, match="an age"):
        parse_retention("forever")


def test_sampling_is_decided_by_the_request_id():
    ids = [f"request-{i}" for i in range(4000)]
    share = sum(sampled(i, 0.25) for i in ids) / len(ids)
    assert 0.22 < share < 0.28
    assert [sampled(i, 0.25) for i in ids] == [sampled(i, 0.25) for i in ids]
    assert all(sampled(i, 1.0) for i in ids) and not any(sampled(i, 0.0) for i in ids)


def job(request_id: str, rows: int = 1, model: str = "m", version: int = 1) -> Job:
    features = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    return Job("predict", model, version, features, request_id)


def probabilities(rows: int = 1) -> np.ndarray:
    return np.tile(np.array([[0.7, 0.2, 0.1]], dtype=np.float32), (rows, 1))


def record(store: Store, request_id: str, rows: int, at: float) -> None:
    j, p = job(request_id, rows), probabilities(rows)
    store.insert(
        [(request_id, "m", 1, 0, "rest", at, rows, j.features.tobytes(), p.tobytes(), '["a"]')],
        [("m", 1, '["x","y"]', '["a","b","c"]')],
    )


def test_store_reads_back_what_it_wrote_and_keeps_a_retry_once(tmp_path):
    store = Store("sqlite", str(tmp_path / "log.db"))
    record(store, "r1", 3, time.time())
    record(store, "r1", 1, time.time())  # the same X-Request-ID again: the first record stays
    found = store.logged("m", ["r1", "nope"])
    assert list(found) == ["r1"] and found["r1"][0].rows == 3
    np.testing.assert_array_equal(found["r1"][0].probabilities, probabilities(3))
    assert store.classes("m", [1]) == {1: CLASSES}


def test_retention_by_age_and_by_rows_runs_once_per_interval(tmp_path):
    store = Store("sqlite", str(tmp_path / "log.db"))
    now = time.time()
    for i in range(10):
        record(store, f"old{i}", 2, now - 7200 + i)  # two hours old
    for i in range(10):
        record(store, f"new{i}", 2, now - 100 + i)
    assert store.enforce_retention(3600, None, every=60)
    assert store.count("predictions") == 10
    assert not store.enforce_retention(3600, 6, every=60)  # claimed a moment ago
    assert store.enforce_retention(None, 6, every=0)  # the newest 6 rows: 3 records of 2 rows
    assert sorted(store.logged("m", [f"new{i}" for i in range(10)])) == ["new7", "new8", "new9"]


def dropped() -> float:
    return metrics.prediction_log_dropped_total.labels("buffer_full")._value.get()


def test_a_database_that_is_gone_never_blocks_and_writing_resumes(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database's folder should be")
    policy = LogPolicy("sqlite", str(blocker / "log.db"), buffer_rows=5)
    log = PredictionLog(policy).start()
    before = dropped()
    started = time.perf_counter()
    for i in range(8):
        log.record(job(f"r{i}"), probabilities(), CLASSES, FEATURES)
    assert time.perf_counter() - started < 0.5  # nothing waited for the database (a bound, not a benchmark)
    assert dropped() - before == 3  # 5 rows kept in the buffer, 3 dropped and counted
    deadline = time.monotonic() + 10
    while log.failures < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.failures >= 2  # it tried, failed and kept trying
    blocker.unlink()
    blocker.mkdir()  # the database can be reached again: the kept rows are written
    assert log.flushed(timeout=15)
    log.close()
    assert sorted(Store("sqlite", str(blocker / "log.db")).logged("m", [f"r{i}" for i in range(8)])) == [
        f"r{i}" for i in range(5)
    ]
