"""The Open Inference Protocol over gRPC, through the official Triton client (`tritonclient.grpc`, sync and aio),
unmodified, against a real server; and a KServe-style typed request through the raw generated stub."""

import asyncio
import os
import shutil
import signal

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.test_resilience import stopped, wait_for, worker_pids
from tests.metrics_text import Scrape
from tests.serving import Server, republish

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
KEY = {"authorization": "Bearer s3cret"}


def features(x: np.ndarray, datatype: str = "FP32") -> tgrpc.InferInput:
    tensor = tgrpc.InferInput("features", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def status_of(call, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as error:
        call(*args, **kwargs)
    return error.value.status(), error.value.message()


@pytest.fixture(scope="module")
def client(server):
    return tgrpc.InferenceServerClient(server.grpc_address)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_health_metadata_and_config(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("iris", "3")  # Triton: false, no error
    metadata = client.get_server_metadata()
    assert (metadata.name, list(metadata.extensions)) == ("tabserve", ["binary_tensor_data", "model_repository"])
    model = client.get_model_metadata("iris", as_json=True)
    assert model["versions"][:2] == ["1", "2"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [(o["name"], o["datatype"]) for o in model["outputs"]] == [("probabilities", "FP32"), ("label", "BYTES")]
    config = client.get_model_config("iris").config
    assert (config.name, config.platform, list(config.input[0].dims)) == ("iris", "onnxruntime_onnx", [4])
    assert config.output[0].label_filename == "labels.txt"


def test_infer_is_bit_identical_to_the_rest_binary_answer(server, client):
    rest = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = thttp.InferInput("features", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=True)
    outputs = [thttp.InferRequestedOutput(name, binary_data=True) for name in ("probabilities", "label")]
    expected = rest.infer("iris", [tensor], model_version="2", outputs=outputs)
    result = client.infer("iris", [features(X)], model_version="2", request_id="grpc-7")
    assert result.as_numpy("probabilities").tobytes() == expected.as_numpy("probabilities").tobytes()
    assert result.as_numpy("label").tolist() == [b"setosa", b"virginica", b"versicolor"]
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("grpc-7", "iris", "2")


def test_fp64_requested_outputs_and_version_routing(client):
    requested = [tgrpc.InferRequestedOutput("label")]
    result = client.infer("iris", [features(X.astype(np.float64), "FP64")], model_version="1", outputs=requested)
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").tolist() == [b"setosa", b"virginica", b"versicolor"]
    assert result.get_response().model_version == "1" and result.get_response().id == ""


def test_the_aio_client_works_too(server):
    async def run():
        client = tgrpc_aio.InferenceServerClient(server.grpc_address)
        try:
            ready = await client.is_model_ready("iris")
            result = await client.infer("iris", [features(X)])
            return ready, result.as_numpy("probabilities").shape
        finally:
            await client.close()

    assert asyncio.run(run()) == (True, (3, 3))


def typed_request(values: list[float], rows: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="iris", model_version="2", id="typed")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[rows, 4])
    tensor.contents.fp32_contents.extend(values)
    return request


def test_typed_contents_get_a_typed_answer_through_the_raw_stub(stub, client):
    response = stub.ModelInfer(typed_request(X.ravel().tolist(), 3))
    assert not response.raw_output_contents and response.id == "typed"
    probabilities, label = response.outputs
    raw = client.infer("iris", [features(X)], model_version="2").as_numpy("probabilities")
    assert np.array(probabilities.contents.fp32_contents, dtype=np.float32).reshape(3, 3).tobytes() == raw.tobytes()
    assert list(label.contents.bytes_contents) == [b"setosa", b"virginica", b"versicolor"]
    both = typed_request(X.ravel().tolist(), 3)
    both.raw_input_contents.append(X.tobytes())
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(both)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(typed_request([1.0] * 7, 2))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has 7 values" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    "model, version, x, datatype, output, code, message",
    [
        ("nope", "", X, "FP32", None, "NOT_FOUND", "model 'nope' not found"),
        ("iris", "9", X, "FP32", None, "NOT_FOUND", "has no version 9"),
        ("iris", "3", X, "FP32", None, "UNAVAILABLE", "unavailable"),  # corrupted: refused at load
        ("iris", "", X[:, :3], "FP32", None, "INVALID_ARGUMENT", "expected [N, 4]"),
        ("iris", "", X.astype(np.int32), "INT32", None, "INVALID_ARGUMENT", "datatype 'INT32' is not supported"),
        ("iris", "", X * np.inf, "FP32", None, "INVALID_ARGUMENT", "is not finite"),
        ("iris", "", X, "FP32", "logits", "INVALID_ARGUMENT", "unknown output 'logits'"),
    ],
)  # fmt: skip
def test_errors_map_to_status_codes_and_name_the_problem(server, client, model, version, x, datatype, output, code,
                                                         message):  # fmt: skip
    outputs = [tgrpc.InferRequestedOutput(output)] if output else None
    before = Scrape.of(server.url).sum("tabserve_requests_total", endpoint="grpc_infer")
    status, text = status_of(client.infer, model, [features(x, datatype)], model_version=version, outputs=outputs)
    assert status == f"StatusCode.{code}" and message in text
    assert Scrape.of(server.url).sum("tabserve_requests_total", endpoint="grpc_infer") == before + 1


@pytest.fixture(scope="module")
def limited(repo):
    # One HTTP process: the queue bound is per process.
    process = Server(repo, "--api-key", "s3cret", "--max-body-bytes", "4096", "--max-rows-per-request", "10",
                     "--max-queue-rows", "5", "--http-processes", "1")  # fmt: skip
    yield process
    process.stop()


def test_api_key_from_metadata_guards_all_but_health(limited):
    client = tgrpc.InferenceServerClient(limited.grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    for call, args in ((client.infer, ("iris", [features(X)])), (client.get_model_metadata, ("iris",)),
                       (client.is_model_ready, ("iris",)), (client.get_server_metadata, ())):  # fmt: skip
        status, text = status_of(call, *args)
        assert status == "StatusCode.UNAUTHENTICATED" and "API key" in text
    assert client.infer("iris", [features(X)], headers=KEY).as_numpy("label").shape == (3,)
    assert client.is_model_ready("iris", headers={"x-api-key": "s3cret"})
    status, _ = status_of(client.infer, "iris", [features(X)], headers={"authorization": "Bearer wrong"})
    assert status == "StatusCode.UNAUTHENTICATED"
    assert Scrape.of(limited.url, headers=KEY).sum("tabserve_requests_total", endpoint="grpc_infer", code="401") == 2


def test_messages_past_the_body_limit_and_rows_past_the_row_limit_are_resource_exhausted(limited):
    client = tgrpc.InferenceServerClient(limited.grpc_address)
    status, text = status_of(client.infer, "iris", [features(np.ones((300, 4), np.float32))], headers=KEY)
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in text  # 4,800 bytes > 4,096
    status, text = status_of(client.infer, "iris", [features(np.ones((11, 4), np.float32))], headers=KEY)
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "the limit per request is 10" in text


def test_the_client_deadline_is_the_request_deadline_and_the_job_is_never_run(limited):
    client = tgrpc.InferenceServerClient(limited.grpc_address)
    scrape = Scrape.of(limited.url, headers=KEY)
    rows = scrape.sum("tabserve_rows_total")
    before = sum(scrape.sum("tabserve_requests_total", endpoint="grpc_infer", code=c) for c in ("499", "503"))
    with stopped(worker_pids(limited)[0]):
        status, _ = status_of(client.infer, "iris", [features(X)], headers=KEY, client_timeout=0.3)
        assert status == "StatusCode.DEADLINE_EXCEEDED"
    dropped = ("tabserve_requests_dropped_total", "cancelled"), ("tabserve_requests_dropped_total", "deadline_exceeded")
    wait_for(lambda: sum(Scrape.of(limited.url, headers=KEY).sum(n, reason=r) for n, r in dropped) == 1)

    # Counted once, either way it ended: grpc cancelled the handler first (499, the client's gone), or the worker's
    # drop came back first (503 deadline_exceeded, as over REST); grpc runs the cancellation on its own schedule.
    def counted() -> float:
        scrape = Scrape.of(limited.url, headers=KEY)
        return sum(scrape.sum("tabserve_requests_total", endpoint="grpc_infer", code=c) for c in ("499", "503"))

    wait_for(lambda: counted() == before + 1)
    assert Scrape.of(limited.url, headers=KEY).sum("tabserve_rows_total") == rows  # never reached the model
    assert client.infer("iris", [features(X)], headers=KEY, client_timeout=30).as_numpy("label").shape == (3,)


def test_past_the_queue_bound_calls_are_unavailable_with_retry_after(limited):
    client = tgrpc.InferenceServerClient(limited.grpc_address)
    answers = []
    with stopped(worker_pids(limited)[0]), grpc.insecure_channel(limited.grpc_address) as channel:
        client.async_infer("iris", [features(X)], lambda result, error: answers.append((result, error)), headers=KEY)
        wait_for(lambda: Scrape.of(limited.url, headers=KEY).sum("tabserve_requests_in_flight") == 1)
        request = pb.ModelInferRequest(model_name="iris", raw_input_contents=[X.tobytes()])
        request.inputs.add(name="features", datatype="FP32", shape=[3, 4])  # 3 + 3 rows > the bound of 5
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request, metadata=tuple(KEY.items()), timeout=30)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and "overloaded" in error.value.details()
    assert dict(error.value.trailing_metadata())["retry-after"].isdigit()
    wait_for(lambda: answers)
    assert answers[0][1] is None  # the call held while the worker was stopped was answered once it ran


def test_a_call_held_by_a_worker_that_dies_is_unavailable_at_once_and_the_replacement_serves(limited):
    client = tgrpc.InferenceServerClient(limited.grpc_address)
    victim, answers = worker_pids(limited)[0], []
    with stopped(victim):
        client.async_infer("iris", [features(X)], lambda result, error: answers.append((result, error)), headers=KEY)
        wait_for(lambda: Scrape.of(limited.url, headers=KEY).sum("tabserve_requests_in_flight") == 1)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: answers, timeout=5)  # not the client's deadline: the HTTP process sees the death at once
    result, error = answers[0]
    assert result is None and error.status() == "StatusCode.UNAVAILABLE" and "worker died" in error.message()
    wait_for(lambda: worker_pids(limited)[0] != victim)
    assert client.infer("iris", [features(X)], headers=KEY, client_timeout=30).as_numpy("label").shape == (3,)


def test_with_no_worker_running_new_calls_are_unavailable_until_the_replacement_serves(limited):
    """The main process (which starts replacements) is stopped, then the only worker killed: until the main
    process runs again, there is no worker, and a new call is refused at once, not queued."""
    client = tgrpc.InferenceServerClient(limited.grpc_address)
    victim = worker_pids(limited)[0]
    with stopped(limited.process.pid):
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not client.is_server_ready(headers=KEY), timeout=5)  # the HTTP process saw the death
        status, text = status_of(client.infer, "iris", [features(X)], headers=KEY, client_timeout=5)
        assert status == "StatusCode.UNAVAILABLE" and "no inference worker is running" in text
    wait_for(lambda: client.is_server_ready(headers=KEY), timeout=30)
    assert worker_pids(limited)[0] != victim
    assert client.infer("iris", [features(X)], headers=KEY, client_timeout=30).as_numpy("label").shape == (3,)


def refuses_new_calls(server: Server) -> bool:
    try:
        tgrpc.InferenceServerClient(server.grpc_address).is_server_live(client_timeout=1)
    except InferenceServerException:
        return True
    return False


def test_hot_reload_is_seen_over_grpc_at_once_and_sigterm_drains_rpcs_in_flight(trained, tmp_path):
    folder, _, _ = trained
    repo = tmp_path / "models"
    republish(folder, repo, "iris")
    server = Server(repo, "--model-control-mode", "explicit")
    try:
        client = tgrpc.InferenceServerClient(server.grpc_address)
        republish(folder, repo, "iris")
        thttp.InferenceServerClient(server.url.removeprefix("http://")).load_model("iris")
        assert client.get_model_metadata("iris").versions == ["1", "2"]
        assert client.infer("iris", [features(X)]).get_response().model_version == "2"

        answers = []
        with stopped(worker_pids(server)[0]):
            client.async_infer("iris", [features(X)], lambda result, error: answers.append((result, error)))
            wait_for(lambda: Scrape.of(server.url).sum("tabserve_requests_in_flight") == 1)
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: refuses_new_calls(server))  # shutting down, with the call still held by the worker
        wait_for(lambda: answers)
        result, error = answers[0]
        assert error is None and result.as_numpy("label").tolist() == [b"setosa", b"virginica", b"versicolor"]
    finally:
        server.stop()
        shutil.rmtree(repo, ignore_errors=True)
