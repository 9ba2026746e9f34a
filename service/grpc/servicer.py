"""The RPCs of `inference.GRPCInferenceService` (KServe's grpc_predict_v2 and Triton's grpc_service agree on them).

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig and ModelInfer; every
other RPC is answered UNIMPLEMENTED by the generated base class. ModelInfer goes through `Gateway.submit`, the
REST path's own: admission control, deadlines (the client's gRPC deadline among them), cancellation (a cancelled
call cancels its job), batching and worker metrics apply unchanged. As on REST, health needs no API key and
everything else does.
"""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from bundle import repository
from service.codecs.oip import InferRequest
from service.core import deadlines
from service.core.errors import MISSING_KEY, ModelNotFound, ServiceError, Unauthorized
from service.core.job import request_ids
from service.dataplane import metadata
from service.dataplane.gateway import Gateway, parse_version, refused
from service.grpc import status_codes, tensors
from service.models.registry import ModelVersion

SERVED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer")
ROUTE = "inference.GRPCInferenceService/ModelInfer"
"""How the access log and the span name ModelInfer (REST: the route template)."""
ENDPOINT = "grpc_infer"
"""`endpoint` label of `tabserve_requests_total` for ModelInfer (REST: `predict`, `infer`)."""


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.ids = request_ids()

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.gateway.ready())

    async def ModelReady(self, request, context):
        """Triton's answer: an unknown or unavailable model or version is `ready=false`, not an error."""
        await self._authorize(context)
        try:
            self._model(request.name, request.version)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.gateway.ready())

    async def ServerMetadata(self, request, context):
        await self._authorize(context)
        server = metadata.server_metadata()
        return pb.ServerMetadataResponse(name=server.name, version=server.version, extensions=server.extensions)

    async def ModelMetadata(self, request, context):
        await self._authorize(context)
        model = await self._found(context, request.name, request.version)
        described = metadata.oip_metadata(self.gateway, model)
        return pb.ModelMetadataResponse(
            name=described.name,
            versions=described.versions,
            platform=described.platform,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in described.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in described.outputs],
        )

    async def ModelConfig(self, request, context):
        """The model's Triton `config.pbtxt`, as written at publish (bundle/repository.py)."""
        await self._authorize(context)
        model = await self._found(context, request.name, request.version)
        path = self.gateway.registry.root / model.name / repository.TRITON_CONFIG_FILE
        try:
            config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        except (OSError, text_format.ParseError) as e:
            await status_codes.abort(context, ModelNotFound(f"model {model.name!r}: no readable config.pbtxt ({e})"))
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request, context):
        """Answer one inference, whatever happens; the gateway's `Call` records it as it does REST's."""
        headers = status_codes.headers(context)
        with self.gateway.call(ENDPOINT, request.id or next(self.ids).decode(), headers, "gRPC", ROUTE,
                               context.peer()) as call:  # fmt: skip
            try:
                self.gateway.prepare(call, headers, request.model_name, request.model_version or None,
                                     context.time_remaining(), "model_name")  # fmt: skip
                answer = await self._infer(call, request)
                call.status = 200
                self.gateway.answered(call, 200, b"")  # a shadow copy, if any, runs once this answer is sent
                return answer
            except asyncio.CancelledError:  # a cancelled call (client gone, deadline passed) stays a 499
                raise
            except Exception as e:
                error = e if isinstance(e, status_codes.Answered) else refused(e, call.model_name, "ModelInfer")
                call.status, call.reason = error.status, error.reason
            await status_codes.abort(context, error)

    async def _infer(self, call, request) -> pb.ModelInferResponse:
        features, typed = tensors.decode(request, call.model.spec)
        timeout = tensors.timeout_us(request)
        call.deadline = deadlines.shorten(call.deadline, call.arrival, timeout)
        infer = InferRequest(features, request.id or None, tensors.outputs(request), timeout)
        call.bytes_in = request.ByteSize() if call.telemetry is not None and call.telemetry.access else 0
        code, body, headers = await self.gateway.submit(self.gateway.job(call, "infer", features, infer))
        call.answered(code, body, headers)
        headers = dict(headers)
        if code != 200:
            retry_after = headers.get(b"retry-after")
            raise status_codes.Answered(code, body, int(retry_after) if retry_after else None)
        return tensors.response(request.id, body, int(headers[b"inference-header-content-length"]), typed)

    def _model(self, name: str, version: str) -> ModelVersion:
        """The version asked for; unknown (or no name): ModelNotFound, unavailable: ModelNotReady."""
        if not name:
            raise ModelNotFound("model_name is empty; name a model", field="model_name")
        return self.gateway.registry.get(name, parse_version(version or None))

    async def _found(self, context, name: str, version: str) -> ModelVersion:
        try:
            return self._model(name, version)
        except ServiceError as e:
            await status_codes.abort(context, e)

    async def _authorize(self, context) -> None:
        if not self.gateway.authorized(status_codes.headers(context)):
            await status_codes.abort(context, Unauthorized(MISSING_KEY))


def _unimplemented(name: str):
    """An RPC tabserve does not serve: UNIMPLEMENTED, saying where to look (the generated base class would log a
    traceback for every call and run it on a thread)."""

    async def rpc(self, request, context):
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{name} is not served over gRPC by tabserve; it serves {', '.join(SERVED)}"
        )

    return rpc


for _name in vars(service_pb2_grpc.GRPCInferenceServiceServicer):
    if _name[0].isupper() and _name not in SERVED:
        setattr(InferenceServicer, _name, _unimplemented(_name))
