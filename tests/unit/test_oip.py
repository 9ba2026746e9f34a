import json
import struct

import numpy as np
import pytest

from service import oip
from service.errors import BadRequest, PayloadTooLarge
from service.instances import InputSpec

SPEC = InputSpec(features=("a", "b"), max_rows=4)
X = np.array([[1.5, -2], [3, 4]], dtype=np.float32)


def tensor(**overrides):
    return {"name": "features", "shape": [2, 2], "datatype": "FP32", "data": X.ravel().tolist(), **overrides}


def decode(request, binary=b""):
    header = json.dumps(request).encode()
    return oip.decode_infer(header + binary, str(len(header)) if binary else None, SPEC)


def test_json_flat_and_nested_data():
    assert decode({"inputs": [tensor()]}).features.tolist() == X.tolist()
    assert decode({"inputs": [tensor(data=X.tolist())], "id": "7"}).id == "7"


def test_binary_tensor_data():
    raw = X.astype("<f4").tobytes()
    request = decode({"inputs": [tensor(data=None, parameters={"binary_data_size": len(raw)})]}, raw)
    assert request.features.tolist() == X.tolist()


@pytest.mark.parametrize(
    ("request_body", "binary", "error", "fragment"),
    [
        ({"inputs": []}, b"", BadRequest, "missing field 'inputs'"),
        ({"inputs": [tensor(), tensor()]}, b"", BadRequest, "exactly one input"),
        ({"inputs": [tensor(name="x")]}, b"", BadRequest, "input name 'x' is unknown"),
        ({"inputs": [tensor(datatype="INT8")]}, b"", BadRequest, "datatype 'INT8' is not supported"),
        ({"inputs": [tensor(shape=[2, 3])]}, b"", BadRequest, "expected [N, 2]"),
        ({"inputs": [tensor(shape=[1, 2])]}, b"", BadRequest, "data has 4 values, the shape needs 2"),
        ({"inputs": [tensor(shape=[5, 2], data=[0] * 10)]}, b"", PayloadTooLarge, "5 rows"),
        ({"inputs": [tensor(data=["a", "b", "c", "d"])]}, b"", BadRequest, "numbers only"),
        ({"inputs": [tensor(data=None, parameters={"binary_data_size": 8})]}, b"\0" * 8, BadRequest, "expected 16"),
        ({"inputs": [tensor(data=None, parameters={"binary_data_size": 16})]}, b"\0" * 12, BadRequest, "12 bytes"),
        ({"inputs": [tensor()], "outputs": [{"name": "logits"}]}, b"", BadRequest, "unknown output 'logits'"),
        ({"inputs": [tensor()], "id": 5}, b"", BadRequest, "id: expected a string"),
        # found by the fuzzer: parameters that are not objects were 500s
        ({"inputs": [tensor(parameters=5)]}, b"", BadRequest, "inputs[0].parameters: expected an object, got 5"),
        ({"inputs": [tensor()], "parameters": "x"}, b"", BadRequest, "parameters: expected an object, got 'x'"),
        (
            {"inputs": [tensor()], "outputs": [{"name": "label", "parameters": []}]},
            b"",
            BadRequest,
            "outputs[0].parameters: expected an object",
        ),
    ],
)
def test_protocol_errors_are_400s_that_say_what_to_fix(request_body, binary, error, fragment):
    with pytest.raises(error, match=None) as raised:
        decode(request_body, binary)
    assert fragment in raised.value.message


def test_bad_header_length():
    with pytest.raises(BadRequest, match="outside the body"):
        oip.decode_infer(b"{}", "99", SPEC)


def test_encode_json_and_binary_outputs():
    request = decode({"inputs": [tensor()], "id": "r", "outputs": [
        {"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}]})  # fmt: skip
    probabilities = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    body, header_length = oip.encode_infer("m", 3, request, probabilities, ["yes", "né"])
    header = json.loads(body[:header_length])
    assert header["id"] == "r" and header["model_version"] == "3"
    label, probs = header["outputs"]
    assert probs["data"] == [0.25, 0.75, 0.5, 0.5] and probs["shape"] == [2, 2]
    raw = body[header_length:]
    assert label["parameters"]["binary_data_size"] == len(raw)
    assert raw == struct.pack("<I", 3) + b"yes" + struct.pack("<I", 3) + "né".encode()
