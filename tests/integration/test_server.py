"""The server as clients see it: a real `python -m service` process, httpx over loopback."""

import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from service.core.schemas import ModelDetails, ModelsResponse, PredictResponse

IRIS_FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


@pytest.fixture(scope="module")
def reference(repo):
    """In-process ONNX Runtime on the same version: what every answer must equal."""
    session = ort.InferenceSession(str(repo / "iris" / "2" / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"features": np.asarray(x, dtype=np.float32)})[0]


def predict(server, body, path="/v1/models/iris/predict", timeout=30, **kwargs):
    return httpx.post(server.url + path, json=body, timeout=timeout, **kwargs)


def probabilities(response):
    classes = ["setosa", "versicolor", "virginica"]
    return np.array([[p["probabilities"][c] for c in classes] for p in response.json()["predictions"]])


def test_positional_and_named_rows_equal_in_process_onnx_runtime(server, reference):
    positional = predict(server, {"instances": ROWS.tolist()})
    named_rows = [dict(zip(reversed(IRIS_FEATURES), reversed(r), strict=True)) for r in ROWS.tolist()]
    named = predict(server, {"instances": named_rows})
    for response in (positional, named):
        assert response.status_code == 200, response.text
        body = PredictResponse.model_validate(response.json())
        assert (body.model, body.version) == ("iris", 2)  # newest READY version: 3 is corrupted
        got = probabilities(response)
        assert np.abs(got - reference(ROWS)).max() <= 1e-6
        assert np.allclose(got.sum(axis=1), 1, atol=1e-6)
        assert [p.label for p in body.predictions] == ["setosa", "virginica", "versicolor"]


def test_routes_for_default_model_and_pinned_versions(server):
    assert predict(server, {"instances": ROWS.tolist()}, path="/predict").json()["model"] == "iris"
    pinned = predict(server, {"instances": ROWS.tolist()}, path="/v1/models/iris/versions/1/predict")
    assert pinned.json()["version"] == 1
    assert predict(server, {"instances": ROWS.tolist()}, path="/v1/models/flowers/predict").json()["model"] == "flowers"


def test_listing_shows_the_broken_version_and_why(server):
    listing = ModelsResponse.model_validate(httpx.get(server.url + "/v1/models").json())
    iris = next(m for m in listing.models if m.name == "iris")
    assert iris.default and [(v.version, v.state) for v in iris.versions] == [
        (1, "READY"), (2, "READY"), (3, "UNAVAILABLE")
    ]  # fmt: skip
    assert "model.onnx: sha256 is" in iris.versions[2].reason
    details = ModelDetails.model_validate(httpx.get(server.url + "/v1/models/iris").json())
    assert details.version == 2 and details.features == IRIS_FEATURES and details.provider == "CPUExecutionProvider"
    assert "accuracy" in details.metrics


BAD_REQUESTS = [
    # (description, request kwargs, path, status, fragment of the error)
    ("malformed JSON", {"content": b'{"instances": [[1,2', "headers": {"content-type": "application/json"}}, None, 400,
     "malformed JSON"),
    ("wrong content type", {"content": b"a=1", "headers": {"content-type": "text/plain"}}, None, 415,
     "content type 'text/plain' is not accepted"),
    ("missing field", {"json": {}}, None, 422, "missing field 'instances'"),
    ("misnamed field", {"json": {"instance": [[1, 2, 3, 4]]}}, None, 422, "unknown fields ['instance']"),
    ("wrong feature count", {"json": {"instances": [[1, 2, 3]]}}, None, 422,
     "instances[0]: expected 4 features, got 3"),
    ("unknown feature", {"json": {"instances": [dict.fromkeys([*IRIS_FEATURES, "colour"], 1.0)]}}, None, 422,
     "unknown features ['colour']"),
    ("missing feature", {"json": {"instances": [dict.fromkeys(IRIS_FEATURES[:3], 1.0)]}}, None, 422,
     "missing features ['petal width (cm)']"),
    ("non-numeric", {"json": {"instances": [[1, "two", 3, 4]]}}, None, 422,
     "instances[0][1] (feature 'sepal width (cm)'): expected a number, got 'two'"),
    ("boolean", {"json": {"instances": [[1, True, 3, 4]]}}, None, 422, "expected a number, got True"),
    ("NaN", {"content": b'{"instances": [[1, NaN, 3, 4]]}', "headers": {"content-type": "application/json"}}, None,
     400, "NaN and Infinity are not accepted"),
    ("Infinity", {"content": b'{"instances": [[1, -Infinity, 3, 4]]}', "headers": {"content-type": "application/json"}},
     None, 400, "NaN and Infinity are not accepted"),
    ("float32 overflow", {"json": {"instances": [[1, 1e39, 3, 4]]}}, None, 422, "is not a finite float32"),
    ("empty instances", {"json": {"instances": []}}, None, 422, "instances: empty"),
    ("instances not a list", {"json": {"instances": "lots"}}, None, 422, "expected a list of rows, got str"),
    ("unknown model", {"json": {"instances": [[1, 2, 3, 4]]}}, "/v1/models/nope/predict", 404,
     "model 'nope' not found"),
    ("unknown version", {"json": {"instances": [[1, 2, 3, 4]]}}, "/v1/models/iris/versions/9/predict", 404,
     "has no version 9"),
    ("version a digit but not a number", {"json": {"instances": [[1, 2, 3, 4]]}},
     "/v1/models/iris/versions/%C2%B2/predict", 404, "'²' is not a version number"),  # was a 500
    ("version beyond 64 bits", {"json": {"instances": [[1, 2, 3, 4]]}},
     "/v1/models/iris/versions/99999999999999999999999/predict", 404, "is not a version number"),  # was a 500
    ("unavailable version", {"json": {"instances": [[1, 2, 3, 4]]}}, "/v1/models/iris/versions/3/predict", 503,
     "version 3 is unavailable"),
    ("OIP shape mismatch", {"json": {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
                                                 "data": [1, 2, 3, 4]}]}}, "/v2/models/iris/infer", 400,
     "data has 4 values, the shape needs 8"),
    ("OIP wrong input name", {"json": {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                   "data": [1, 2, 3, 4]}]}}, "/v2/models/iris/infer", 400,
     "input name 'x' is unknown"),
    ("OIP unsupported datatype", {"json": {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "BYTES",
                                                       "data": ["a", "b", "c", "d"]}]}}, "/v2/models/iris/infer", 400,
     "input datatype 'BYTES' is not supported"),
    ("OIP wrong feature dimension", {"json": {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32",
                                                          "data": [1, 2, 3]}]}}, "/v2/models/iris/infer", 400,
     "expected [N, 4]"),
    ("OIP unknown output", {"json": {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                                 "data": [1, 2, 3, 4]}], "outputs": [{"name": "logits"}]}},
     "/v2/models/iris/infer", 400, "unknown output 'logits'"),
    ("OIP output parameters not an object", {"json": {"inputs": [{"name": "features", "shape": [1, 4],
                                                                  "datatype": "FP32", "data": [1, 2, 3, 4]}],
                                                      "outputs": [{"name": "label", "parameters": "x"}]}},
     "/v2/models/iris/infer", 400, "outputs[0].parameters: expected an object"),  # was a 500
]  # fmt: skip


@pytest.mark.parametrize(("description", "kwargs", "path", "status", "fragment"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])  # fmt: skip
def test_bad_input_gets_a_4xx_naming_the_problem(server, description, kwargs, path, status, fragment):
    response = httpx.post(server.url + (path or "/v1/models/iris/predict"), timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert predict(server, {"instances": ROWS.tolist()}).status_code == 200  # and the server keeps serving


@pytest.mark.parametrize("version", ["%C2%B2", "99999999999999999999999"])
def test_odd_versions_in_read_routes_are_404s_in_json(server, version):
    """Found by fuzzing: '²' passes str.isdigit() but not int(), a huge number did not fit the JSON encoder;
    both were 500s, and FastAPI's were text/plain."""
    for path in (f"/v1/models/iris/versions/{version}", f"/v2/models/iris/versions/{version}/ready"):
        response = httpx.get(server.url + path)
        assert response.status_code == 404 and "is not a version number" in response.json()["error"], path


def test_bad_requests_never_fail_the_good_ones_batched_with_them(server, reference):
    good = {"instances": ROWS.tolist()}
    bad = [{"instances": [[1, 2, 3]]}, {"instances": [[1, "x", 3, 4]]}, {"nope": 1}, {"instances": []}]
    bodies = [bad[i % len(bad)] if i % 3 == 0 else good for i in range(300)]
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda b: client.post(server.url + "/v1/models/iris/predict", json=b), bodies))
    for body, response in zip(bodies, responses, strict=True):
        if body is good:
            assert response.status_code == 200, response.text
            assert np.abs(probabilities(response) - reference(ROWS)).max() <= 1e-6
        else:
            assert response.status_code == 422, response.text


def onnx_calls(server):
    """(rows, requests) of every ONNX Runtime call the worker made, from its debug log."""
    return [(int(r), int(q)) for r, q in re.findall(r"onnxruntime call iris/2 rows=(\d+) requests=(\d+)",
                                                     server.output())]  # fmt: skip


def test_concurrent_requests_are_batched_into_shared_onnx_runtime_calls(server):
    before = len(onnx_calls(server))
    row = {"instances": [ROWS[0].tolist()]}
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda _: client.post(server.url + "/v1/models/iris/predict", json=row), range(400)))
    assert all(r.status_code == 200 for r in responses)
    calls = onnx_calls(server)[before:]
    assert sum(rows for rows, _ in calls) == 400  # every row ran exactly once
    assert len(calls) < 400 and max(requests for _, requests in calls) > 1  # and some calls served several requests
    assert max(rows for rows, _ in calls) <= 64  # never more than --max-batch-rows


def test_a_request_larger_than_the_max_batch_is_split_and_answered_whole(server, reference):
    rng = np.random.default_rng(0)
    rows = (ROWS[rng.integers(0, 3, 500)] + rng.normal(0, 0.3, (500, 4))).astype(np.float32)
    before = len(onnx_calls(server))
    response = predict(server, {"instances": rows.tolist()})
    assert response.status_code == 200
    assert np.abs(probabilities(response) - reference(rows)).max() <= 1e-6
    assert [rows for rows, _ in onnx_calls(server)[before:]] == [64] * 7 + [52]


def test_concurrent_large_requests_overflowing_the_pipes_are_all_answered(server, reference):
    """8 × 20,000 rows: requests and answers far larger than the 1 MiB pipes, in flight together (a blocking
    write in the HTTP process used to deadlock against the worker writing answers)."""
    rng = np.random.default_rng(1)
    batches = [
        (ROWS[rng.integers(0, 3, 20_000)] + rng.normal(0, 0.3, (20_000, 4))).astype(np.float32) for _ in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda rows: predict(server, {"instances": rows.tolist()}, timeout=120), batches))
    for rows, response in zip(batches, responses, strict=True):
        assert response.status_code == 200, response.text[:200]
        assert np.abs(probabilities(response) - reference(rows)).max() <= 1e-6


def test_request_id_is_echoed_or_generated(server):
    given = predict(server, {"instances": ROWS.tolist()}, headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = httpx.get(server.url + "/v1/models")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    error = predict(server, {"instances": []}, headers={"x-request-id": "bad-1"})
    assert error.headers["x-request-id"] == "bad-1"


def test_openapi_documents_the_real_bodies(server):
    document = httpx.get(server.url + "/openapi.json").json()
    predict_op = document["paths"]["/v1/models/{name}/predict"]["post"]
    assert predict_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert "instances" in document["components"]["schemas"]["PredictRequest"]["properties"]
    assert "/v2/models/{name}/infer" in document["paths"] and "/v1/models" in document["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200


def test_kserve_v1_predict_and_readiness(server, reference):
    """KServe V1 clients: `POST /v1/models/{name}:predict` with `instances`, readiness from `GET /v1/models/{name}`."""
    response = predict(server, {"instances": ROWS.tolist()}, path="/v1/models/iris:predict")
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == len(ROWS)
    assert np.abs(probabilities(response) - reference(ROWS)).max() <= 1e-6
    status = httpx.get(server.url + "/v1/models/iris")
    assert status.status_code == 200 and status.json()["ready"] is True and status.json()["name"] == "iris"


def test_a_large_bad_body_is_refused_by_the_worker_with_the_same_message(server):
    """Bodies over 512 KiB are decoded by the worker: bad input there is the same 4xx, naming the same field."""
    rows = [[5.1, 3.5, 1.4, 0.2]] * 30_000  # about 660 kB
    rows[-1] = [5.1, "x", 1.4, 0.2]
    response = predict(server, {"instances": rows})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "instances[29999][1]" and response.json()["reason"] == "non_numeric"
    assert predict(server, {"instances": rows[:-1]}).status_code == 200  # and the worker keeps serving


def test_expect_100_continue_is_answered_before_the_body_and_the_answer_follows_whole(server):
    """The response head is held back until its body (service/rest/limits.py `OneWrite`); 100 Continue never is."""
    body = json.dumps({"instances": [ROWS[0].tolist()]}).encode()
    head = (f"POST /v1/models/iris/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nexpect: 100-continue\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(head.encode())
        assert connection.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # before any body byte
        connection.sendall(body)
        answer = b""
        while not (answer.count(b"\r\n\r\n") and answer.endswith(b"}]}")):
            answer += connection.recv(65536)
    status, _, payload = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 OK") and json.loads(payload)["predictions"][0]["label"] == "setosa"
