"""ModelInferRequest → validated rows, and a worker's binary answer → ModelInferResponse.

Validation is the REST path's (service/codecs/oip.py: the same checks and messages). Inputs come as `raw_input_contents`
(what tritonclient.grpc always sends: little-endian bytes) or typed `contents` (KServe's clients may send
`fp32_contents`), never both. The worker encodes every output in the binary tensor layout, which is exactly
gRPC's raw layout (FP32 little-endian; BYTES as 4-byte length + bytes), so a raw answer is the REST binary answer's
bytes, unchanged. A typed request gets a typed answer: tritonclient decodes only raw contents, KServe reads either.
"""

from __future__ import annotations

import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor

from service.codecs import oip
from service.codecs.spec import InputSpec
from service.core.errors import BadRequest, describe

TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents"}
TIMEOUT_KINDS = ("int64_param", "uint64_param")


def decode(request: pb.ModelInferRequest, spec: InputSpec) -> tuple[np.ndarray, bool]:
    """The request's rows as float32 [N, n_features], and whether they came typed; a `ServiceError` if bad."""
    if len(request.inputs) != 1:
        raise BadRequest(
            f"expected exactly one input tensor 'features', got {len(request.inputs)}",
            reason="wrong_input_name",
            field="inputs",
        )
    tensor = request.inputs[0]
    rows = oip.check_input(tensor.name, tensor.datatype, list(tensor.shape), spec)
    count, raw, typed = rows * spec.n_features, request.raw_input_contents, tensor.HasField("contents")
    if raw and typed:
        raise BadRequest(
            "inputs[0]: send raw_input_contents or contents, not both", reason="ambiguous_data", field="inputs[0]"
        )
    if raw:
        if len(raw) != 1:
            raise BadRequest(
                f"raw_input_contents has {len(raw)} entries for 1 input", reason="shape_mismatch",
                field="raw_input_contents", expected=1, got=len(raw),
            )  # fmt: skip
        array = oip.from_bytes(raw[0], count, oip.DATATYPES[tensor.datatype], "raw_input_contents[0]")
    elif typed:
        array = _typed(tensor, count)
    else:
        raise BadRequest(
            "inputs[0]: no data; send raw_input_contents or contents.fp32_contents",
            reason="missing_field",
            field="inputs[0].contents",
        )
    return oip.as_features(array, rows, spec), typed


def _typed(tensor: pb.ModelInferRequest.InferInputTensor, count: int) -> np.ndarray:
    wanted = TYPED[tensor.datatype]
    filled = [field.name for field, _ in tensor.contents.ListFields()]
    if filled != [wanted]:
        raise BadRequest(
            f"inputs[0].contents: {tensor.datatype} data goes in {wanted} alone, got {filled or 'nothing'}",
            reason="wrong_type",
            field=f"inputs[0].contents.{wanted}",
            expected=wanted,
            got=filled,
        )
    values = getattr(tensor.contents, wanted)
    if len(values) != count:
        raise BadRequest(
            f"inputs[0].contents.{wanted} has {len(values)} values, the shape needs {count}",
            reason="shape_mismatch",
            field=f"inputs[0].contents.{wanted}",
            expected=count,
            got=len(values),
        )
    return np.array(values, dtype=oip.DATATYPES[tensor.datatype])


def outputs(request: pb.ModelInferRequest) -> tuple[oip.RequestedOutput, ...]:
    """The outputs asked for, in order (all of them when none is named), each encoded binary by the worker."""
    if not request.outputs:
        return tuple(oip.RequestedOutput(name, True) for name in oip.OUTPUTS)
    requested = []
    for i, output in enumerate(request.outputs):
        if output.name not in oip.OUTPUTS:
            raise BadRequest(
                f"outputs[{i}]: unknown output {describe(output.name)}; this model has {list(oip.OUTPUTS)}",
                reason="unknown_output", field=f"outputs[{i}].name", expected=list(oip.OUTPUTS),
                got=describe(output.name),
            )  # fmt: skip
        if "classification" in output.parameters:
            raise BadRequest(
                f"outputs[{i}]: the classification extension is not supported; read the 'label' output",
                reason="unsupported_parameter",
                field=f"outputs[{i}].parameters.classification",
            )
        requested.append(oip.RequestedOutput(output.name, True))
    return tuple(requested)


def timeout_us(request: pb.ModelInferRequest) -> int | None:
    """`parameters["timeout"]` in µs (Triton's; tritonclient's `timeout=`): it may only shorten the deadline."""
    if "timeout" not in request.parameters:
        return None
    parameter = request.parameters["timeout"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in TIMEOUT_KINDS or getattr(parameter, kind) < 0:
        raise BadRequest(
            "parameters.timeout: expected a non-negative int64_param of microseconds",
            reason="wrong_type",
            field="parameters.timeout",
            got=describe(getattr(parameter, kind) if kind else None),
        )
    return getattr(parameter, kind)


def response(request_id: str, body: bytes, header_length: int, typed: bool) -> pb.ModelInferResponse:
    """The worker's binary-tensor answer (JSON header, then each output's bytes) as a ModelInferResponse."""
    header = orjson.loads(body[:header_length])
    answer = pb.ModelInferResponse(
        model_name=header["model_name"], model_version=header["model_version"], id=request_id
    )
    offset = header_length
    for tensor in header["outputs"]:
        size = tensor["parameters"]["binary_data_size"]
        data, offset = body[offset : offset + size], offset + size
        output = answer.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        if not typed:
            answer.raw_output_contents.append(data)
        elif tensor["datatype"] == "BYTES":
            output.contents.bytes_contents.extend(deserialize_bytes_tensor(data).tolist())
        else:
            output.contents.fp32_contents.extend(np.frombuffer(data, dtype="<f4").tolist())
    return answer
