"""Open Inference Protocol v2 through the official Triton HTTP client, unmodified, in JSON and binary modes."""

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def expected(repo):
    session = ort.InferenceSession(str(repo / "iris" / "2" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": X})[0]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("iris", "3")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_repository"]
    metadata = client.get_model_metadata("iris")
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]
    assert client.get_model_metadata("iris", "1")["parameters"]["version"] == "1"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_in_both_modes(client, expected, binary):
    features = triton.InferInput("features", list(X.shape), "FP32")
    features.set_data_from_numpy(X, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "label")]
    result = client.infer("iris", [features], outputs=outputs, request_id="req-7")
    assert np.abs(result.as_numpy("probabilities") - expected).max() <= 1e-6
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
    assert labels == ["setosa", "virginica", "versicolor"]
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "iris" and response["model_version"] == "2"


def test_outputs_filter_and_pinned_version(client, expected):
    features = triton.InferInput("features", list(X.shape), "FP32")
    features.set_data_from_numpy(X, binary_data=True)
    result = client.infer("iris", [features], model_version="1", outputs=[triton.InferRequestedOutput("label")])
    assert result.as_numpy("probabilities") is None and len(result.as_numpy("label")) == 3
    assert result.get_response()["model_version"] == "1"


def test_errors_reach_the_client_as_4xx(client):
    features = triton.InferInput("features", [1, 4], "FP32")
    features.set_data_from_numpy(X[:1])
    with pytest.raises(InferenceServerException, match="model 'nope' not found") as error:
        client.infer("nope", [features])
    assert error.value.status() == "404"


def test_nested_json_data_and_generated_id(server, expected):
    body = {"inputs": [{"name": "features", "shape": [3, 4], "datatype": "FP32", "data": X.tolist()}]}
    response = httpx.post(server.url + "/v2/models/iris/versions/2/infer", json=body)
    assert response.status_code == 200
    payload = response.json()
    assert payload["id"] == response.headers["x-request-id"]
    outputs = {o["name"]: o for o in payload["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 3] and outputs["label"]["datatype"] == "BYTES"
    assert np.abs(np.array(outputs["probabilities"]["data"]).reshape(3, 3) - expected).max() <= 1e-6
