"""Open Inference Protocol (KServe v2) tensors: decode an infer request, encode its response.

Supports JSON tensors (flat or nested `data`) and the binary tensor data extension, where raw little-endian
bytes follow the JSON header and `Inference-Header-Content-Length` says where the JSON ends. This is what
the official Triton client sends by default for bulk data. Protocol violations are 400s that say what to fix.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.codecs import bulk_json
from service.codecs.spec import InputSpec, parse_json
from service.core.errors import BadRequest, PayloadTooLarge, describe

INPUT_NAME = "features"
OUTPUTS = ("probabilities", "label")
HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {"FP32": np.float32, "FP64": np.float64}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    features: np.ndarray  # float32 [N, n_features]
    id: str | None
    outputs: tuple[RequestedOutput, ...]
    timeout_us: int | None = None  # `parameters.timeout`: Triton's per-request deadline (service/core/deadlines.py)


def _bad(message: str, reason: str, **details: Any) -> BadRequest:
    return BadRequest(message, reason=reason, **details)


def _parameters(holder: dict, field: str) -> dict:
    """The `parameters` object of a request, tensor or output ({} if absent); anything else is a 400, not a crash."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise _bad(f"{field}: expected an object, got {describe(parameters)}", "wrong_type", field=field)
    return parameters


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise _bad(
            f"Inference-Header-Content-Length must be an integer, got {describe(header_length)}", "bad_header"
        ) from None
    if not 0 < length <= len(body):
        raise _bad(f"Inference-Header-Content-Length {length} is outside the body (of {len(body)} bytes)", "bad_header")
    return body[:length], body[length:]


def decode_infer(body: bytes, header_length: str | None, spec: InputSpec) -> InferRequest:
    header, binary = split_body(body, header_length)
    request = bulk_json.infer_request(header) if len(header) >= bulk_json.BULK_BYTES else None
    if request is None:
        request = parse_json(header)
    if not isinstance(request, dict):
        raise _bad(f"expected a JSON object with 'inputs', got {type(request).__name__}", "wrong_type")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("missing field 'inputs': a list with one tensor named 'features'", "missing_field", field="inputs")
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(
            f"expected exactly one input tensor 'features', got {len(inputs)}", "wrong_input_name", field="inputs"
        )
    features = _input_tensor(inputs[0], binary, spec)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"id: expected a string, got {describe(request_id)}", "wrong_type", field="id")
    timeout = _timeout(request)
    return InferRequest(features=features, id=request_id, outputs=_requested_outputs(request), timeout_us=timeout)


def _timeout(request: dict) -> int | None:
    timeout = _parameters(request, "parameters").get("timeout")
    if timeout is None:
        return None
    if type(timeout) is not int or timeout < 0:
        raise _bad(
            f"parameters.timeout: expected a non-negative integer of microseconds, got {describe(timeout)}",
            "wrong_type",
            field="parameters.timeout",
        )
    return timeout


def _input_tensor(tensor: dict, binary: bytes, spec: InputSpec) -> np.ndarray:
    datatype = tensor.get("datatype")
    rows = check_input(tensor.get("name"), datatype, tensor.get("shape"), spec)
    parameters = _parameters(tensor, "inputs[0].parameters")
    if "binary_data_size" in parameters:
        array = _binary_tensor(parameters["binary_data_size"], binary, rows * spec.n_features, DATATYPES[datatype])
    else:
        array = _json_tensor(tensor.get("data"), rows * spec.n_features)
    return as_features(array, rows, spec)


def check_input(name: Any, datatype: Any, shape: Any, spec: InputSpec) -> int:
    """The rows of a well-formed input tensor description (REST or gRPC), else a 4xx naming what is wrong."""
    if name != INPUT_NAME:
        raise _bad(
            f"input name {describe(name)} is unknown; this model takes one input {INPUT_NAME!r}",
            "wrong_input_name",
            field="inputs[0].name",
            expected=INPUT_NAME,
            got=describe(name),
        )
    if datatype not in DATATYPES:
        raise _bad(
            f"input datatype {describe(datatype)} is not supported; send FP32",
            "unsupported_datatype",
            field="inputs[0].datatype",
            expected="FP32",
            got=describe(datatype),
        )
    n = spec.n_features
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(type(d) is int for d in shape)
        or shape[0] < 1
        or shape[1] != n
    ):
        raise _bad(
            f"input shape {describe(shape)}: expected [N, {n}] with N ≥ 1",
            "shape_mismatch",
            field="inputs[0].shape",
            expected=f"[N, {n}]",
            got=describe(shape),
        )
    if shape[0] > spec.max_rows:
        raise PayloadTooLarge(
            f"input shape {shape}: {shape[0]} rows, the limit per request is {spec.max_rows}",
            reason="too_many_rows",
            field="inputs[0].shape",
            expected=spec.max_rows,
            got=shape[0],
        )
    return shape[0]


def as_features(array: np.ndarray, rows: int, spec: InputSpec) -> np.ndarray:
    """The decoded values as float32 [rows, n_features], refused if any is not finite."""
    with np.errstate(over="ignore"):  # beyond float32: inf, refused below
        array = array.reshape(rows, spec.n_features).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        row, column = map(int, np.argwhere(~np.isfinite(array))[0])
        raise _bad(
            f"inputs[0] row {row}, feature {spec.features[column]!r}: {array[row, column]} is not finite",
            "non_finite",
            field="inputs[0].data",
        )
    return array


def _binary_tensor(size: Any, binary: bytes, count: int, dtype: type) -> np.ndarray:
    expected = count * np.dtype(dtype).itemsize
    if size != expected:
        raise _bad(
            f"binary_data_size {describe(size)} does not match the shape: expected {expected} bytes",
            "shape_mismatch",
            field="inputs[0].parameters.binary_data_size",
            expected=expected,
            got=describe(size),
        )
    return from_bytes(binary, count, dtype, "inputs[0].parameters.binary_data_size")


def from_bytes(data: bytes, count: int, dtype: type, field: str) -> np.ndarray:
    """`count` little-endian values of `dtype` (the binary extension's and gRPC raw contents' layout)."""
    expected = count * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise _bad(
            f"the request carries {len(data)} bytes of tensor data, the shape needs {expected}",
            "shape_mismatch",
            field=field,
            expected=expected,
            got=len(data),
        )
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))


def _json_tensor(data: Any, count: int) -> np.ndarray:
    array = data if isinstance(data, np.ndarray) else _json_array(data)  # an array: flat numbers, from bulk_json
    if array.dtype.kind not in "fiu":
        raise _bad("inputs[0].data: expected numbers only", "non_numeric", field="inputs[0].data", expected="numbers")
    if array.size != count:
        raise _bad(
            f"inputs[0].data has {array.size} values, the shape needs {count}",
            "shape_mismatch",
            field="inputs[0].data",
            expected=count,
            got=int(array.size),
        )
    return array


def _json_array(data: Any) -> np.ndarray:
    if not isinstance(data, list):
        raise _bad(
            "inputs[0]: missing 'data' (or binary_data_size for binary data)", "missing_field", field="inputs[0].data"
        )
    try:
        return np.array(data)
    except ValueError:
        raise _bad("inputs[0].data: nested lists of unequal length", "shape_mismatch", field="inputs[0].data") from None


def _requested_outputs(request: dict) -> tuple[RequestedOutput, ...]:
    binary_default = bool(_parameters(request, "parameters").get("binary_data_output", False))
    outputs = request.get("outputs")
    if outputs is None:
        return tuple(RequestedOutput(name, binary_default) for name in OUTPUTS)
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise _bad('outputs: expected a list of {"name": ...} objects', "wrong_type", field="outputs")
    requested = []
    for i, output in enumerate(outputs):
        name = output.get("name")
        if name not in OUTPUTS:
            raise _bad(
                f"outputs[{i}]: unknown output {describe(name)}; this model has {list(OUTPUTS)}",
                "unknown_output",
                field=f"outputs[{i}].name",
                expected=list(OUTPUTS),
                got=describe(name),
            )
        binary = _parameters(output, f"outputs[{i}].parameters").get("binary_data", binary_default)
        requested.append(RequestedOutput(name, bool(binary)))
    return tuple(requested)


def encode_infer(
    model: str, version: int, request: InferRequest, probabilities: np.ndarray, classes: list[str]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None). Labels (the top
    class of each row) are worked out only when asked for: most bulk clients want the probabilities alone."""
    outputs, chunks = [], []
    for output in request.outputs:
        if output.name == "probabilities":
            tensor = {"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape)}
            raw = np.ascontiguousarray(probabilities, dtype="<f4")
            values: Any = raw
        else:
            labels = [classes[i] for i in probabilities.argmax(axis=1).tolist()]
            tensor = {"name": "label", "datatype": "BYTES", "shape": [len(labels)]}
            raw = b"".join(struct.pack("<I", len(b)) + b for b in (label.encode() for label in labels))
            values = labels
        if output.binary:
            data = raw.tobytes() if isinstance(raw, np.ndarray) else raw
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = values.ravel() if isinstance(values, np.ndarray) else values
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
