"""The RPCs of `inference.GRPCInferenceService` (KServe's grpc_predict_v2 and Triton's grpc_service agree on them).

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig and ModelInfer; every
other RPC is answered UNIMPLEMENTED by the generated base class. ModelInfer goes through `Gateway.submit`, the
REST path's own: admission control, deadlines (the client's gRPC deadline among them), cancellation (a cancelled
call cancels its job), batching and worker metrics apply unchanged. As on REST, health needs no API key and
everything else does.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from bundle import repository
from service import auth, deadlines, metrics, routes
from service.batching import Job
from service.errors import ModelNotFound, ServiceError, Unauthorized
from service.fastpath import Gateway, parse_version, refused, request_ids
from service.grpc_api import status, tensors
from service.oip import InferRequest
from service.registry import ModelVersion

SERVED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer")
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
        return pb.ServerMetadataResponse(
            name=routes.SERVER_NAME, version=routes.SERVER_VERSION, extensions=routes.EXTENSIONS
        )

    async def ModelMetadata(self, request, context):
        await self._authorize(context)
        model = await self._found(context, request.name, request.version)
        metadata = routes.oip_metadata(self.gateway, model)
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=metadata.versions,
            platform=metadata.platform,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in metadata.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in metadata.outputs],
        )

    async def ModelConfig(self, request, context):
        """The model's Triton `config.pbtxt`, as written at publish (bundle/repository.py)."""
        await self._authorize(context)
        model = await self._found(context, request.name, request.version)
        path = self.gateway.registry.root / model.name / repository.TRITON_CONFIG_FILE
        try:
            config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        except (OSError, text_format.ParseError) as e:
            await status.abort(context, ModelNotFound(f"model {model.name!r}: no readable config.pbtxt ({e})"))
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request, context):
        """Answer one inference, whatever happens, and record it as the REST fast path does."""
        start, arrival = time.perf_counter(), time.monotonic()
        metrics.requests_in_flight.inc()
        model, code = None, 499  # a cancelled call (client gone, deadline passed) keeps nginx's "client closed"
        try:
            try:
                if not self.gateway.authorized(status.headers(context)):
                    raise Unauthorized(auth.MISSING_KEY)
                model = self._model(request.model_name, request.model_version)
                answer = await self._infer(model, request, context, arrival)
                code = 200
                return answer
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = e if isinstance(e, status.Answered) else refused(e, model.name if model else "", "ModelInfer")
                code = error.status
            await status.abort(context, error)
        finally:
            metrics.requests_in_flight.dec()
            name, version = (model.name, str(model.version)) if model else ("", "")
            metrics.requests_total.labels(name, version, ENDPOINT, str(code)).inc()
            metrics.request_duration_seconds.labels(name, ENDPOINT).observe(time.perf_counter() - start)

    async def _infer(self, model: ModelVersion, request, context, arrival: float) -> pb.ModelInferResponse:
        features, typed = tensors.decode(request, model.spec)
        timeout = tensors.timeout_us(request)
        infer = InferRequest(features, request.id or None, tensors.outputs(request), timeout)
        deadline = deadlines.shorten(arrival + self.gateway.settings.max_queue_time_ms / 1000, arrival, timeout)
        remaining = context.time_remaining()  # the client's gRPC deadline, if it set one
        if remaining is not None:
            deadline = min(deadline, arrival + remaining)
        job = Job("infer", model.name, model.version, features, request.id or next(self.ids).decode(), infer,
                  self.gateway.reloader.generation, arrival, deadline)  # fmt: skip
        code, body, headers = await self.gateway.submit(job)
        headers = dict(headers)
        if code != 200:
            retry_after = headers.get(b"retry-after")
            raise status.Answered(code, body, int(retry_after) if retry_after else None)
        return tensors.response(request.id, body, int(headers[b"inference-header-content-length"]), typed)

    def _model(self, name: str, version: str) -> ModelVersion:
        """The version asked for (the default one for ""); unknown: ModelNotFound, unavailable: ModelNotReady."""
        if not name:
            raise ModelNotFound("model_name is empty; name a model", field="model_name")
        return self.gateway.registry.get(name, parse_version(version or None))

    async def _found(self, context, name: str, version: str) -> ModelVersion:
        try:
            return self._model(name, version)
        except ServiceError as e:
            await status.abort(context, e)

    async def _authorize(self, context) -> None:
        if not self.gateway.authorized(status.headers(context)):
            await status.abort(context, Unauthorized(auth.MISSING_KEY))


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
