"""The prediction log and feedback on a real server: every protocol and process logs what it answered (explain
does not), labels join their predictions and are scored into `tabserve_feedback_*`, every bad call gets its named
4xx, and a PostgreSQL server killed mid-run fails no request, counts what it dropped and is written again once back."""

from __future__ import annotations

import sqlite3
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from sklearn.datasets import load_iris

from tests.metrics_text import Scrape
from tests.postgres import Postgres
from tests.serving import Server, republish

X, Y = load_iris(return_X_y=True)
CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback") / "models"
    republish(trained[0], root, "iris")
    process = Server(root, "--max-body-bytes", "4096")
    yield process
    process.stop()


def predict(server: Server, rows: np.ndarray, request_id: str) -> dict:
    response = httpx.post(server.url + "/v1/models/iris/predict", json={"instances": rows.tolist()},
                          headers={"x-request-id": request_id}, timeout=10)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def feedback(server: Server, body, **kwargs) -> httpx.Response:
    return httpx.post(server.url + "/v1/models/iris/feedback", json=body, timeout=10, **kwargs)


def logged(server: Server, expected: int) -> dict[str, tuple]:
    """The SQLite log's records by request id, once `expected` of them are written."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(server.state_dir / "predictions.db") as db:
            rows = db.execute("SELECT request_id, protocol, rows, features, probabilities, labels FROM predictions")
            found = {r[0]: r[1:] for r in rows}
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_every_protocol_and_process_logs_what_it_answered_and_explain_does_not(served):
    one, many = X[:1].astype(np.float32), X[50:90].astype(np.float32)  # 1 row: the inline lane; 40: a worker
    answers = {"rest-1": predict(served, one, "rest-1"), "rest-40": predict(served, many, "rest-40")}
    oip = {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": X[100:102].ravel().tolist()}]}
    response = httpx.post(served.url + "/v2/models/iris/infer", json=oip, headers={"x-request-id": "oip-2"}, timeout=10)
    assert response.status_code == 200
    tensor = tgrpc.InferInput("features", [3, 4], "FP32")
    tensor.set_data_from_numpy(X[140:143].astype(np.float32))
    tgrpc.InferenceServerClient(served.grpc_address).infer("iris", [tensor], request_id="grpc-3")
    explained = httpx.post(served.url + "/v1/models/iris/explain", json={"instances": one.tolist()},
                           headers={"x-request-id": "explain-1"}, timeout=10)  # fmt: skip
    assert explained.status_code == 200
    found = logged(served, 4)
    assert {k: v[:2] for k, v in found.items() if k in ("rest-1", "rest-40", "oip-2", "grpc-3", "explain-1")} == {
        "rest-1": ("rest", 1), "rest-40": ("rest", 40), "oip-2": ("rest", 2), "grpc-3": ("grpc", 3),
    }  # fmt: skip
    for request_id, rows in (("rest-1", one), ("rest-40", many)):
        _, _, features, probabilities, labels = found[request_id]
        np.testing.assert_array_equal(np.frombuffer(features, "<f4").reshape(rows.shape), rows)
        expected = [[p["probabilities"][c] for c in CLASSES] for p in answers[request_id]["predictions"]]
        assert np.frombuffer(probabilities, "<f4").reshape(-1, 3).tolist() == np.float32(expected).tolist()
        assert labels == str([p["label"] for p in answers[request_id]["predictions"]]).replace("'", '"').replace(
            " ", ""
        )


def test_labels_are_scored_per_version_exactly_as_sent(served):
    before = Scrape.of(served.url)
    rows = [0, 10, 60, 70, 77, 83, 106, 119, 133, 134, 138, 149]  # some of them mispredicted by a short training
    predicted = []
    for i in rows:  # each label sent right after its answer: found although the log writes every ~50 ms
        answer = predict(served, X[i : i + 1].astype(np.float32), f"scored-{i}")
        predicted.append(answer["predictions"][0]["label"])
        assert feedback(served, {"request_id": f"scored-{i}", "labels": [CLASSES[Y[i]]]}).json() == {"matched": 1}
    after = Scrape.of(served.url)

    def delta(name: str, **labels) -> float:
        return after.sum(name, model="iris", version="1", **labels) - before.sum(
            name, model="iris", version="1", **labels
        )

    truth = [CLASSES[Y[i]] for i in rows]
    assert delta("tabserve_feedback_rows_total") == len(rows)
    assert delta("tabserve_feedback_correct_total") == sum(p == t for p, t in zip(predicted, truth, strict=True))
    for t in CLASSES:
        for p in CLASSES:
            expected = sum(a == t and b == p for a, b in zip(truth, predicted, strict=True))
            assert delta("tabserve_feedback_confusion_total", label=t, predicted=p) == expected
    assert delta("tabserve_feedback_log_loss_total") > 0 and 0 < delta("tabserve_feedback_brier_total") < 2 * len(rows)
    assert after.sum("tabserve_feedback_delay_seconds_count", model="iris") - before.sum(
        "tabserve_feedback_delay_seconds_count", model="iris") == len(rows)  # fmt: skip
    assert after.sum("tabserve_offline_accuracy", model="iris", version="1") > 0


def test_every_bad_call_gets_its_named_4xx(served):
    predict(served, X[:2].astype(np.float32), "two-rows")
    ok = {"request_id": "two-rows", "labels": ["setosa", None]}
    assert feedback(served, ok).json() == {"matched": 1}
    assert feedback(served, ok).json() == {"matched": 1}  # the same again: a safe retry, counted once
    cases = [
        ({"request_id": "two-rows", "labels": ["setosa", "setosa"]}, 409, "conflicting_feedback"),
        ({"request_id": "never-seen", "labels": ["setosa"]}, 404, "unknown_request"),
        ({"request_id": "two-rows", "labels": ["setosa"]}, 422, "wrong_label_count"),
        ({"request_id": "two-rows", "labels": ["setosa", "rose"]}, 422, "unknown_label"),
        ({"request_id": "two-rows", "labels": ["setosa", 1.5]}, 422, "invalid_input"),
        ({"feedback": [ok, ok]}, 422, "duplicate_request"),
        ({"feedback": [ok, {"request_id": "never-seen", "labels": [None]}]}, 404, "unknown_request"),
        ({"feedback": []}, 422, "invalid_input"),
        ({"request_id": "", "labels": []}, 422, "invalid_input"),
        ({"labels": ["setosa"]}, 422, "invalid_input"),
    ]
    for body, status, reason in cases:
        response = feedback(served, body)
        assert (response.status_code, response.json()["reason"]) == (status, reason), (body, response.text)
    assert "setosa" in feedback(served, cases[3][0]).json()["error"]  # the classes are named
    assert feedback(served, {"feedback": [ok]}).json() == {"matched": 1}  # the batch form
    assert feedback(served, cases[1][0]).json()["field"] == "request_id"
    bad = [
        (httpx.post(served.url + "/v1/models/rose/feedback", json=ok), 404, "model_not_found"),
        (httpx.post(served.url + "/v1/models/iris/feedback", content=b"{nope"), 400, "bad_request"),
        (httpx.post(served.url + "/v1/models/iris/feedback", content=b"{}", headers={"content-type": "text/csv"}),
         415, "wrong_content_type"),
        (feedback(served, {"request_id": "x" * 100, "labels": ["setosa"] * 2000}), 413, "body_too_large"),
    ]  # fmt: skip
    for response, status, reason in bad:
        assert (response.status_code, response.json()["reason"]) == (status, reason), response.text


def test_with_the_log_off_nothing_is_written_and_feedback_says_why(trained, tmp_path):
    republish(trained[0], tmp_path / "models", "iris")
    process = Server(tmp_path / "models", "--prediction-log", "off")
    try:
        predict(process, X[:1].astype(np.float32), "unlogged")
        response = feedback(process, {"request_id": "unlogged", "labels": ["setosa"]})
        assert (response.status_code, response.json()["reason"]) == (404, "prediction_log_off")
    finally:
        process.stop()
    assert not (process.state_dir / "predictions.db").exists()


def count(url: str) -> int:
    """Records in the PostgreSQL log (0 before a server process has created the schema)."""
    import psycopg

    with psycopg.connect(url) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0


def test_postgresql_killed_mid_run_fails_no_request_and_logging_resumes(trained, tmp_path):
    postgres = Postgres()
    republish(trained[0], tmp_path / "models", "iris")
    process = Server(tmp_path / "models", "--prediction-log", postgres.url, "--prediction-log-buffer-rows", "100")
    try:
        with httpx.Client(base_url=process.url, timeout=10) as client:
            for i in range(20):
                assert client.post("/predict", json={"instances": [X[i].tolist()]}).status_code == 200
            deadline = time.monotonic() + 10
            while count(postgres.url) < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert count(postgres.url) == 20
            postgres.kill()
            statuses = [client.post("/predict", json={"instances": [X[i % 150].tolist()]}).status_code
                        for i in range(600)]  # fmt: skip
            assert set(statuses) == {200}
            refused = feedback(process, {"request_id": "whatever", "labels": ["setosa"]})
            assert (refused.status_code, refused.json()["reason"]) == (503, "prediction_log_unavailable")
            assert "retry-after" in refused.headers
            dropped = Scrape.of(process.url).sum("tabserve_prediction_log_dropped_total", reason="buffer_full")
            assert dropped > 0  # beyond each process's 100 buffered rows
            postgres.start()
            deadline = time.monotonic() + 20
            while count(postgres.url) < 20 + 100 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert count(postgres.url) >= 20 + 100  # the kept rows were written once it was back
            answer = client.post("/predict", json={"instances": [X[0].tolist()]}, headers={"x-request-id": "after"})
            assert answer.status_code == 200
            assert feedback(process, {"request_id": "after", "labels": ["setosa"]}).json() == {"matched": 1}
    finally:
        process.stop()
        postgres.close()
