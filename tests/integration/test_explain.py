"""Explanations as clients see them: a real server, httpx over loopback, answers checked against ONNX Runtime.

The repository holds `iris` v1, published as versions were before explanations existed (no explain.onnx), and
v2, a fresh training with its explanation graph.
"""

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from bundle.manifest import Manifest
from service.core.schemas import ExplainResponse
from tests.metrics_text import Scrape
from tests.serving import Server, republish

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
CLASSES = ["setosa", "versicolor", "virginica"]
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


@pytest.fixture(scope="module")
def repo(trained, tmp_path_factory):
    folder, _, _ = trained
    root = tmp_path_factory.mktemp("explained") / "models"
    republish(folder, root, "iris", before_explanations=True)
    republish(folder, root, "iris")
    return root


@pytest.fixture(scope="module")
def server(repo):
    """A small batch delay, so concurrent predict and explain requests share batches."""
    process = Server(repo, "--max-batch-delay-ms", "20", log_level="debug")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def reference(repo):
    session = ort.InferenceSession(str(repo / "iris" / "2" / "explain.onnx"), providers=["CPUExecutionProvider"])

    def run(rows, target):
        rows = np.asarray(rows, dtype=np.float32)
        return session.run(None, {"features": rows, "target": np.full(len(rows), target, dtype=np.int64)})

    return run


def explain(server, body, path="/v1/models/iris:explain"):
    return httpx.post(server.url + path, json=body, timeout=30)


def attributions(row):
    return np.array([row["attributions"][f] for f in FEATURES])


def test_every_route_explains_the_predicted_class_as_onnx_runtime_does(server, reference, repo):
    probabilities, index, baseline, expected = reference(ROWS, -1)
    for path in ("/v1/models/iris:explain", "/v1/models/iris/explain", "/v1/models/iris/versions/2/explain",
                 "/explain"):  # fmt: skip
        response = explain(server, {"instances": ROWS.tolist()}, path)
        assert response.status_code == 200, response.text
        body = ExplainResponse.model_validate(response.json())
        assert (body.model, body.version, body.method, body.baseline.kind) == ("iris", 2, "integrated_gradients",
                                                                                "training_mean")  # fmt: skip
        assert body.steps >= 16
        rows = response.json()["explanations"]
        assert [row["label"] for row in rows] == [CLASSES[i] for i in index] == ["setosa", "virginica", "versicolor"]
        for i, row in enumerate(rows):
            assert np.abs(attributions(row) - expected[i]).max() <= 1e-6
            assert row["probability"] == pytest.approx(probabilities[i, index[i]], abs=1e-6)
            assert row["baseline_probability"] == pytest.approx(baseline[i], abs=1e-6)
            assert abs(row["completeness_error"]) <= 1e-3
            assert "requested" not in row


def test_the_answer_names_the_baseline_and_agrees_with_predict(server, repo):
    mean = Manifest.read(repo / "iris" / "2").scaler.mean
    body = explain(server, {"instances": ROWS.tolist()}).json()
    assert body["baseline"]["features"] == pytest.approx(dict(zip(FEATURES, mean, strict=True)))
    predicted = httpx.post(server.url + "/v1/models/iris/predict", json={"instances": ROWS.tolist()}).json()
    for row, prediction in zip(body["explanations"], predicted["predictions"], strict=True):
        assert row["label"] == prediction["label"]
        assert row["probability"] == pytest.approx(prediction["probabilities"][row["label"]], abs=1e-6)


def test_a_named_class_is_explained_too(server, reference):
    named = [dict(zip(FEATURES, row, strict=True)) for row in ROWS.tolist()]
    response = explain(server, {"instances": named, "class": "virginica"})
    assert response.status_code == 200, response.text
    ExplainResponse.model_validate(response.json())
    _, _, baseline, expected = reference(ROWS, 2)
    for i, row in enumerate(response.json()["explanations"]):
        requested = row["requested"]
        assert requested["label"] == "virginica"
        assert np.abs(attributions(requested) - expected[i]).max() <= 1e-6
        assert requested["baseline_probability"] == pytest.approx(baseline[i], abs=1e-6)
        assert abs(requested["completeness_error"]) <= 1e-3


@pytest.mark.parametrize(
    ("body", "status", "reason", "words"),
    [
        ({"instances": ROWS.tolist(), "class": "rose"}, 422, "unknown_class", ["'rose'", "setosa", "virginica"]),
        ({"instances": ROWS.tolist(), "class": 2}, 422, "wrong_type", ["class label"]),
        ({"instances": ROWS.tolist(), "target": "setosa"}, 422, "unknown_field", ["'target'", "'class'"]),
        ({"instances": [[1.0, 2.0]]}, 422, "feature_count", ["expected 4 features, got 2"]),
        ({"class": "setosa"}, 422, "missing_field", ["instances"]),
        ({"instances": [["a", 1, 2, 3]]}, 422, "non_numeric", ["instances[0][0]"]),
    ],
)
def test_bad_bodies_are_refused_naming_the_problem(server, body, status, reason, words):
    response = explain(server, body)
    assert response.status_code == status, response.text
    assert response.json()["reason"] == reason
    for word in words:
        assert word in response.json()["error"]


def test_a_version_published_before_explanations_answers_409_saying_retrain(server):
    response = explain(server, {"instances": ROWS.tolist()}, "/v1/models/iris/versions/1/explain")
    assert response.status_code == 409
    assert response.json()["reason"] == "no_explanation_graph"
    assert "no explanation graph" in response.json()["error"] and "retrain" in response.json()["error"]
    predicted = httpx.post(server.url + "/v1/models/iris/versions/1/predict", json={"instances": ROWS.tolist()})
    assert predicted.status_code == 200  # it still predicts


def test_concurrent_predict_and_explain_requests_are_each_answered_right(server, reference):
    _, _, _, expected = reference(ROWS, -1)
    before = Scrape.of(server.url)

    def one(i):
        if i % 2:
            return "predict", httpx.post(server.url + "/v1/models/iris/predict", json={"instances": ROWS.tolist()})
        return "explain", explain(server, {"instances": ROWS.tolist()})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(32)))
    for kind, response in answers:
        assert response.status_code == 200
        if kind == "explain":
            got = np.array([attributions(row) for row in response.json()["explanations"]])
            assert np.abs(got - expected).max() <= 1e-6
        else:
            assert len(response.json()["predictions"]) == 3
    after = Scrape.of(server.url)
    counted = after.sum("tabserve_requests_total", endpoint="explain", code="200") - before.sum(
        "tabserve_requests_total", endpoint="explain", code="200"
    )
    assert counted == 16


def test_a_large_body_is_decoded_by_the_worker_and_split_into_calls(server, reference):
    rows = np.tile(ROWS, (6000, 1))  # 18,000 rows: over 512 KiB of JSON
    response = explain(server, {"instances": rows.tolist(), "class": "setosa"})
    assert response.status_code == 200, response.text
    explained = response.json()["explanations"]
    assert len(explained) == len(rows)
    _, _, _, expected = reference(ROWS, 0)
    got = np.array([attributions(row["requested"]) for row in explained[-3:]])
    assert np.abs(got - expected).max() <= 1e-6
    bad = explain(server, {"instances": [*rows.tolist(), [1.0]]})
    assert bad.status_code == 422 and "instances[18000]" in bad.json()["error"]
