"""`/metrics` counts exactly what happened, summed over the HTTP process and two inference workers."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.metrics_text import Scrape
from tests.serving import Server

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
FAR = [100.0, 3.0, 4.2, 1.5]  # sepal length 100 cm: far beyond 4 training standard deviations


@pytest.fixture(scope="module")
def served(repo):
    process = Server(repo, "--workers", "2", "--max-batch-rows", "64", "--drift-z", "4")
    yield process
    process.stop()


def test_every_ready_version_has_its_series_at_zero_before_its_first_request(repo):
    """From load, not from the first call: `rate()` over a new version then starts from 0 (ratios of two of its
    rates were off while the scrape that saw one series born before the other was in the window)."""
    process = Server(repo, "--workers", "2")
    try:
        m = Scrape.of(process.url)
    finally:
        process.stop()
    ready = {("iris", "1"), ("iris", "2"), ("flowers", "1")}  # iris v3 is corrupted: never loaded, no series
    for name in ("tabserve_rows_total", "tabserve_batch_rows_count", "tabserve_inference_duration_seconds_count",
                 "tabserve_predictions_total", "tabserve_feature_out_of_range_total"):  # fmt: skip
        assert {(labels["model"], labels["version"]) for labels in m.series(name)} == ready, name
        assert m.sum(name) == 0, name
    assert {labels["label"] for labels in m.series("tabserve_predictions_total")} == {
        "setosa",
        "versicolor",
        "virginica",
    }


def traffic(url: str) -> tuple[list[httpx.Response], list[tuple[str, dict]]]:
    """45 good requests over two models, both APIs and a pinned version; 9 bad ones; all concurrent."""
    good = [("/v1/models/iris/predict", {"instances": ROWS[np.arange(i % 5 + 1) % 3].tolist()}) for i in range(30)]
    good += [("/v1/models/iris/versions/1/predict", {"instances": [FAR] * 3}) for _ in range(5)]
    oip = {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": ROWS[:2].tolist()}]}
    good += [("/v2/models/flowers/infer", oip) for _ in range(10)]
    bad = [("/v1/models/iris/predict", {"instances": [["a", 1, 2, 3]]})] * 4
    bad += [("/v1/models/nope/predict", {"instances": ROWS.tolist()})] * 3
    bad += [("/v1/models/iris/predict", {"instances": [[1.0, 2.0]]})] * 2
    requests = good + bad
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda r: httpx.post(url + r[0], json=r[1], timeout=30), requests))
    return responses, requests


def test_counters_say_exactly_what_was_sent(served):
    responses, requests = traffic(served.url)
    assert Counter(r.status_code for r in responses) == {200: 45, 422: 6, 404: 3}
    iris_labels = Counter(
        p["label"] for r, (path, _) in zip(responses, requests, strict=True)
        if r.status_code == 200 and path == "/v1/models/iris/predict" for p in r.json()["predictions"]
    )  # fmt: skip
    iris_rows = sum(i % 5 + 1 for i in range(30))

    m = Scrape.of(served.url)
    assert m.sum("tabserve_requests_total") == 54
    assert m.sum("tabserve_requests_total", model="iris", version="2", endpoint="predict", code="200") == 30
    assert m.sum("tabserve_requests_total", model="iris", version="1", code="200") == 5
    assert m.sum("tabserve_requests_total", model="flowers", endpoint="infer", code="200") == 10
    assert m.sum("tabserve_requests_total", model="", version="", code="404") == 3
    assert m.sum("tabserve_request_duration_seconds_count") == 54
    assert m.sum("tabserve_requests_in_flight") == 0
    assert m.sum("tabserve_input_rejected_total", model="iris", reason="non_numeric") == 4
    assert m.sum("tabserve_input_rejected_total", model="iris", reason="feature_count") == 2
    assert m.sum("tabserve_input_rejected_total", model="", reason="model_not_found") == 3

    # Worker-side metrics: one queue observation per request that reached a worker, every row once.
    assert m.sum("tabserve_queue_duration_seconds_count") == 45
    assert m.sum("tabserve_rows_total", model="iris", version="2") == iris_rows
    assert m.sum("tabserve_batch_rows_sum", model="iris", version="2") == iris_rows
    assert m.sum("tabserve_rows_total", model="flowers") == 20
    assert m.sum("tabserve_inference_duration_seconds_count") == m.sum("tabserve_batch_rows_count") >= 3
    assert {
        label: m.sum("tabserve_predictions_total", model="iris", version="2", label=label) for label in iris_labels
    } == dict(iris_labels)
    assert m.sum("tabserve_predictions_total", model="iris", version="2") == iris_rows

    # Drift: only the pinned version got out-of-range rows, and only in the first feature.
    assert m.sum("tabserve_feature_out_of_range_total", model="iris", version="1", feature="sepal length (cm)") == 15
    assert m.sum("tabserve_feature_out_of_range_total", model="iris", version="1") == 15
    assert m.sum("tabserve_feature_out_of_range_total", model="iris", version="2") == 0


def test_model_info_priors_failures_and_build(served):
    m = Scrape.of(served.url)
    loaded = {(s["model"], s["version"], s["provider"]) for s in m.series("tabserve_model_info")}
    assert loaded == {(n, v, "CPUExecutionProvider") for n, v in [("iris", "1"), ("iris", "2"), ("flowers", "1")]}
    assert m.sum("tabserve_model_info") == 3  # set by the HTTP process only: not once per worker
    assert m.sum("tabserve_model_load_failures_total", model="iris", reason="hash_mismatch") == 1
    for model, version in [("iris", "1"), ("iris", "2"), ("flowers", "1")]:
        assert m.sum("tabserve_class_prior", model=model, version=version) == pytest.approx(1.0)
    assert m.sum("tabserve_build_info", version="0.1.0") == 1
    assert all(name.startswith("tabserve_") for name in m.names())


def test_a_restarted_server_starts_from_zero(repo, tmp_path):
    """The metrics folder is emptied at start: counts from an earlier run must not leak into the next."""
    folder = tmp_path / "metrics"
    first = Server(repo, "--metrics-dir", str(folder))
    httpx.post(first.url + "/predict", json={"instances": ROWS.tolist()}, timeout=30).raise_for_status()
    assert Scrape.of(first.url).sum("tabserve_requests_total") == 1
    first.stop()
    second = Server(repo, "--metrics-dir", str(folder))
    try:
        assert Scrape.of(second.url).sum("tabserve_requests_total") == 0
    finally:
        second.stop()
