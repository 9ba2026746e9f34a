import json
import struct
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.codecs import bulk_json, oip
from service.codecs.spec import InputSpec
from service.core.errors import BadRequest, PayloadTooLarge, ServiceError

SPEC = InputSpec(features=("a", "b"), max_rows=4)
X = np.array([[1.5, -2], [3, 4]], dtype=np.float32)


@pytest.fixture(autouse=True, params=["bulk", "small"])
def path(request, monkeypatch):
    """Every test runs twice: with the simdjson path taking every header, and with no header large enough for it."""
    monkeypatch.setattr(bulk_json, "BULK_BYTES", 0 if request.param == "bulk" else 1 << 62)
    return request.param


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
    body, header_length = oip.encode_infer("m", 3, request, probabilities, ["né", "yes"])  # top: 1, then 0 (a tie)
    header = json.loads(body[:header_length])
    assert header["id"] == "r" and header["model_version"] == "3"
    label, probs = header["outputs"]
    assert probs["data"] == [0.25, 0.75, 0.5, 0.5] and probs["shape"] == [2, 2]
    raw = body[header_length:]
    assert label["parameters"]["binary_data_size"] == len(raw)
    assert raw == struct.pack("<I", 3) + b"yes" + struct.pack("<I", 3) + "né".encode()


def outcome(header: bytes):
    """What decoding makes of a header: the request's fields, or the error's type and message."""
    try:
        request = oip.decode_infer(header, None, SPEC)
    except ServiceError as e:
        return type(e), e.message
    return request.features.tolist(), request.id, request.outputs, request.timeout_us


def both_paths(header: bytes) -> tuple:
    with mock.patch.object(bulk_json, "BULK_BYTES", 0):
        bulk = outcome(header)
    with mock.patch.object(bulk_json, "BULK_BYTES", 1 << 62):
        return bulk, outcome(header)


@pytest.mark.parametrize(
    "header",
    [
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}], "id": "a", '
        b'"id": "b"}',  # orjson: the last "id" wins
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4], '
        b'"data": [5, 6, 7, 8]}]}',
        b'{"id": "\\u005b", "inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [[5], 6, 7, '
        b"8]}]}",  # the escape writes back a "[" the header does not count: as many as the nested list adds
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 1e400]}]}',
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1, true, 3, 4]}]}',
        # nested: rows the bulk path proves, and ones it must leave to the exact path
        b'{"id": "[[,]]", "inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], '
        b"[3, 4]]}]}",
        b'{"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]], '
        b'"parameters": {"data": null}}]}',  # a second `"data": null` in the rest
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [[[1, 2]], [3, 4]]}]}',
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [[1], [2, 3, 4]]}]}',
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2, 3, 4], []]}]}',
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], 3, 4]}]}',
        b'{"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]}',
    ],
)
def test_duplicate_keys_escapes_and_odd_values_read_the_same_on_both_paths(header):
    bulk, exact = both_paths(header)
    assert bulk == exact


@pytest.mark.parametrize(
    ("data", "taken"),
    [
        ([[1, 2], [3, 4]], True),  # rows, as KServe's examples send them
        ([[1, 2, 3, 4]], True),  # one row of all values: row-major either way
        ([[1], [2], [3], [4]], True),
        ([[1, 2], [3, 4, 5, 6]], False),
        ([[[1, 2]], [3, 4]], False),
        ([[1, 2], [[3], 4]], False),
    ],
)
def test_nested_rows_take_the_bulk_path_only_when_regular(data, taken):
    request = bulk_json.infer_request(json.dumps({"id": "[x],", "inputs": [tensor(data=data)]}).encode())
    assert (request is not None) == taken
    if taken:
        assert request["inputs"][0]["data"].tolist() == [1, 2, 3, 4] and request["id"] == "[x],"


NUMBER = st.one_of(st.integers(-(2**31), 2**31), st.floats(allow_nan=False, allow_infinity=False))
VALUE = st.one_of(NUMBER, st.booleans(), st.none(), st.text(max_size=2))
DATA = st.one_of(
    st.lists(NUMBER, min_size=3, max_size=5),
    st.lists(st.lists(NUMBER, min_size=1, max_size=3), max_size=3),
    st.lists(st.one_of(NUMBER, st.lists(NUMBER, max_size=2)), max_size=5),
    st.lists(VALUE, max_size=5),
    VALUE,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=DATA, request_id=st.one_of(st.none(), st.text(max_size=4)), shape=st.sampled_from([[2, 2], [1, 2], [4]]))
def test_the_bulk_path_reads_any_infer_request_as_the_exact_path_does(data, request_id, shape):
    """Flat, nested, ragged, mixed or wrong data, ids with brackets: both paths give the same request or error."""
    request = {"inputs": [tensor(data=data, shape=shape)], **({"id": request_id} if request_id is not None else {})}
    bulk, exact = both_paths(json.dumps(request).encode())
    assert bulk == exact
