"""gRPC translation without a server: protobuf tensors to validated rows, and errors to status codes."""

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from service.codecs.spec import InputSpec
from service.core.errors import (
    BadRequest,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
)
from service.grpc import status_codes, tensors

SPEC = InputSpec(features=("a", "b"), max_rows=10)
X = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)


def request(raw: list[bytes] = (), datatype: str = "FP32", shape=(2, 2), **typed) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", raw_input_contents=list(raw))
    tensor = message.inputs.add(name="features", datatype=datatype, shape=list(shape))
    for field, values in typed.items():
        getattr(tensor.contents, field).extend(values)
    return message


def test_raw_fp32_and_fp64_and_typed_contents_decode_to_the_same_rows():
    assert tensors.decode(request([X.tobytes()]), SPEC)[0].tolist() == X.tolist()
    assert tensors.decode(request([X.astype("<f8").tobytes()], "FP64"), SPEC)[0].tolist() == X.tolist()
    rows, typed = tensors.decode(request(fp64_contents=X.ravel().tolist(), datatype="FP64"), SPEC)
    assert rows.dtype == np.float32 and rows.tolist() == X.tolist() and typed


@pytest.mark.parametrize(
    "message, match",
    [
        (request([X.tobytes()[:-4]]), "carries 12 bytes of tensor data, the shape needs 16"),
        (request([X.tobytes(), X.tobytes()]), "raw_input_contents has 2 entries for 1 input"),
        (request(), "no data"),
        (request(int_contents=[1, 2, 3, 4]), "FP32 data goes in fp32_contents alone"),
        (request(shape=(11, 2), fp32_contents=[0.0] * 22), "the limit per request is 10"),
        (request([np.array([[1, np.nan], [1, 2]], np.float32).tobytes()]), "feature 'b': nan is not finite"),
    ],
)
def test_bad_tensors_say_what_is_wrong(message, match):
    with pytest.raises(ServiceError, match=match):
        tensors.decode(message, SPEC)


def test_timeout_and_outputs():
    message = request([X.tobytes()])
    assert tensors.timeout_us(message) is None
    message.parameters["timeout"].int64_param = 5000
    assert tensors.timeout_us(message) == 5000
    message.parameters["timeout"].string_param = "soon"
    with pytest.raises(BadRequest, match=r"parameters\.timeout"):
        tensors.timeout_us(message)
    assert [o.name for o in tensors.outputs(message)] == ["probabilities", "label"]
    message.outputs.add(name="label")
    assert [(o.name, o.binary) for o in tensors.outputs(message)] == [("label", True)]


@pytest.mark.parametrize(
    "error, code",
    [
        (BadRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (ModelNotReady("x"), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("x"), grpc.StatusCode.UNAVAILABLE),
        (PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
        (DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (
            status_codes.Answered(503, b'{"error": "x", "reason": "deadline_exceeded"}', 1),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ),
        (status_codes.Answered(500, b'{"error": "x", "reason": "inference_error"}', None), grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_map_to_tritons_status_codes(error, code):
    assert status_codes.code_for(error) == code
