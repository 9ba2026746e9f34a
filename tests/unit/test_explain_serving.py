"""Explain bodies and the worker's explain calls, with real ONNX Runtime sessions on a trained bundle."""

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from service.codecs import explain
from service.codecs.bodies import decode_job
from service.codecs.spec import InputSpec
from service.core.errors import Conflict, InvalidInput
from service.core.job import Job
from service.core.settings import Settings
from service.engine.worker import InferenceAPI

SPEC = InputSpec(features=("a", "b"), max_rows=10, classes=("x", "y", "z"))


def test_an_explain_body_is_a_predict_body_with_an_optional_class():
    features, target = explain.decode_explain(b'{"instances": [[1, 2], [3, 4]]}', SPEC)
    assert features.tolist() == [[1, 2], [3, 4]] and target is None
    features, target = explain.decode_explain(b'{"class": "z", "instances": [{"b": 2, "a": 1}]}', SPEC)
    assert features.tolist() == [[1, 2]] and target == 2
    assert explain.decode_explain(b'{"instances": [[1, 2]], "class": null}', SPEC)[1] is None


@pytest.mark.parametrize(
    ("body", "reason", "text"),
    [
        (b'{"instances": [[1, 2]], "class": "w"}', "unknown_class", "unknown class 'w'; this model's classes are"),
        (b'{"instances": [[1, 2]], "class": ["x"]}', "wrong_type", "expected a class label"),
        (b'{"instances": [[1, 2]], "label": "x"}', "unknown_field", "unknown fields ['label']"),
        (b'{"instances": [[1, 2, 3]], "class": "x"}', "feature_count", "expected 2 features, got 3"),
    ],
)
def test_bad_explain_bodies_name_the_problem(body, reason, text):
    with pytest.raises(InvalidInput, match=text.replace("[", r"\[").replace("]", r"\]")) as error:
        explain.decode_explain(body, SPEC)
    assert error.value.reason == reason


def test_packed_rows_carry_the_predicted_then_the_requested_class():
    rows = np.array([[1, 2], [3, 4]], dtype=np.float32)
    assert explain.packed_rows(rows, None).tolist() == [[1, 2, -1], [3, 4, -1]]
    assert explain.packed_rows(rows, 2).tolist() == [[1, 2, -1], [3, 4, -1], [1, 2, 2], [3, 4, 2]]


@pytest.fixture(scope="module")
def api(trained):
    _, _, repo = trained
    api = InferenceAPI(Settings(repository=repo, max_batch_rows=4))
    api.setup("cpu")
    return api


def job(kind, body, request_id):
    spec = InputSpec(features=("sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"),
                     max_rows=1000, classes=("setosa", "versicolor", "virginica"))  # fmt: skip
    return decode_job(Job(kind, "iris", 1, None, request_id, body=orjson.dumps(body)), spec)


def test_predict_and_explain_jobs_of_one_batch_run_as_separate_calls_and_answer_right(api, trained):
    folder, _, _ = trained
    rows = np.random.default_rng(0).normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.7, 0.8], size=(10, 4)).astype("f4")
    jobs = [
        job("explain", {"instances": rows[:7].tolist(), "class": "versicolor"}, "a"),
        job("predict", {"instances": rows.tolist()}, "b"),
        job("explain", {"instances": rows[7:].tolist()}, "c"),
    ]
    answers = api.answer(jobs, [0.0] * len(jobs))
    assert [status for status, _, _ in answers] == [200, 200, 200]
    graph = ort.InferenceSession(str(folder / "explain.onnx"), providers=["CPUExecutionProvider"])
    model = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    predicted = orjson.loads(answers[1][1])["predictions"]
    assert np.allclose([list(p["probabilities"].values()) for p in predicted], model.run(None, {"features": rows})[0])
    for (_, body, _), x, target in ((answers[0], rows[:7], 1), (answers[2], rows[7:], None)):
        explained = orjson.loads(body)["explanations"]
        expected = graph.run(None, {"features": x, "target": np.full(len(x), -1, np.int64)})[3]
        assert np.allclose([list(r["attributions"].values()) for r in explained], expected, atol=1e-6)
        if target is not None:
            again = graph.run(None, {"features": x, "target": np.full(len(x), target, np.int64)})[3]
            assert np.allclose([list(r["requested"]["attributions"].values()) for r in explained], again, atol=1e-6)


def test_the_worker_refuses_explain_for_a_version_without_a_graph(api):
    entry = api.registry.get("iris", 1)
    legacy = entry.manifest.model_copy(update={"explanation": None})
    with pytest.raises(Conflict, match="no explanation graph"):
        explain.require_explanation("iris", 1, legacy)
