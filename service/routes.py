"""Everything except the hot prediction path: model listing and metadata, health, and the OpenAPI entries.

These are FastAPI routes on LitServe's app; errors from any of them go through one handler that answers
`{"error": ...}` with the error's status.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import control, metrics, schemas
from service.errors import ServiceError
from service.fastpath import PUBLIC, Gateway, parse_version
from service.registry import ModelVersion

SERVER_NAME = "tabserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def _states(gateway: Gateway, name: str) -> list[schemas.VersionState]:
    return [
        schemas.VersionState(version=v.version, state=v.state, reason=v.reason)
        for v in sorted(gateway.registry.models.get(name, {}).values(), key=lambda v: v.version)
    ]


def _details(gateway: Gateway, model: ModelVersion) -> schemas.ModelDetails:
    m = model.manifest
    return schemas.ModelDetails(
        name=model.name,
        ready=gateway.ready(),
        version=model.version,
        versions=_states(gateway, model.name),
        features=m.features,
        classes=m.classes,
        metrics=m.metrics,
        provider=model.provider,
        created_at=m.created_at.isoformat(),
        dataset=m.dataset.model_dump(),
    )


def oip_metadata(gateway: Gateway, model: ModelVersion) -> schemas.OipModelMetadata:
    ready = [str(v.version) for v in gateway.registry.models[model.name].values() if v.state == "READY"]
    return schemas.OipModelMetadata(
        name=model.name,
        versions=ready,
        platform="onnxruntime_onnx",
        inputs=[schemas.TensorMetadata(name="features", datatype="FP32", shape=[-1, model.manifest.n_features])],
        outputs=[
            schemas.TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, model.manifest.n_classes]),
            schemas.TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
        ],
        parameters={"version": str(model.version), "provider": model.provider, "labels": model.manifest.classes},
    )


def workers_ready(gateway: Gateway) -> bool:
    """Ready while at least one inference worker takes requests (it announces itself once it has loaded, or
    rejected, every version). With several workers, one being replaced does not take the server out."""
    return gateway.ready()


ERRORS = {code: {"model": schemas.ErrorResponse} for code in (400, 404, 413, 415, 422, 503)}
"""The error answers every model route documents."""


def register(app: FastAPI, gateway: Gateway) -> None:
    _register_error_handlers(app)
    _register_operations(app, gateway)
    _register_models(app, gateway)
    _register_fast_path_operations(app)
    _register_open_inference_protocol(app, gateway)
    control.register(app, gateway, ERRORS)  # the OIP repository extension
    _complete_openapi(app, gateway, (schemas.PredictRequest, schemas.ExplainRequest, schemas.OipInferRequest))


def _register_error_handlers(app: FastAPI) -> None:
    """Every error answers `{"error": ..., "reason": ...}` in JSON, with its status."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Keep the error's headers: a 405 must say which methods the route allows (`Allow`, RFC 9110).
        return JSONResponse(
            {"error": str(error.detail), "reason": "http"}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        """A bug, not a client mistake: answered in JSON like every other error, not Starlette's text/plain (the
        server still logs the traceback: Starlette re-raises after this answer)."""
        return JSONResponse({"error": "internal server error", "reason": "internal"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse({"error": f"{where}: {first['msg']}", "reason": "invalid_input", "field": where}, 422)


def _register_operations(app: FastAPI, gateway: Gateway) -> None:
    """`/`, `/health` and `/metrics`."""
    # LitServe's own `/` and `/health` answer text without a content type while FastAPI documents them as
    # JSON; these answer the same, as documented plain text.
    app.router.routes = [r for r in app.router.routes if not (isinstance(r, APIRoute) and r.path in ("/", "/health"))]

    @app.get("/", response_class=PlainTextResponse, tags=["operations"])
    def index():
        return "tabserve running"

    @app.get("/health", response_class=PlainTextResponse, tags=["operations"], responses={503: PLAIN_503})
    def health():
        """`ok` once every inference worker has loaded, else 503 `not ready` (no API key needed)."""
        return PlainTextResponse("ok") if workers_ready(gateway) else PlainTextResponse("not ready", 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus text format, summed over every server process (service/metrics.py)."""
        content, content_type = metrics.render()
        return Response(content, media_type=content_type)


def _register_models(app: FastAPI, gateway: Gateway) -> None:
    """The simple API's model listing and details."""
    registry = gateway.registry

    @app.get("/v1/models", response_model=schemas.ModelsResponse, tags=["models"])
    def list_models():
        """Every model and version in the repository, with the reason a version could not be loaded."""
        return schemas.ModelsResponse(
            models=[
                schemas.ModelListing(
                    name=name,
                    default=name == registry.default_model,
                    versions=_states(gateway, name),
                    served_version=_served_version(gateway, name),
                    policy=registry.policies[name].describe(),
                )
                for name in sorted(registry.models)
            ]
        )

    @app.get("/v1/models/{name}", response_model=schemas.ModelDetails, responses=ERRORS, tags=["models"])
    def model_details(name: str):
        """The newest ready version: features (in order), classes, test metrics, execution provider."""
        return _details(gateway, registry.get(name))

    @app.get(
        "/v1/models/{name}/versions/{version}", response_model=schemas.ModelDetails, responses=ERRORS, tags=["models"]
    )
    def version_details(name: str, version: str):
        return _details(gateway, registry.get(name, parse_version(version)))


# The handler of the documentation-only routes. No docstring: FastAPI would make it their description; and
# its name is in their OpenAPI operationIds, which generated clients use.
def served_by_fast_path():  # pragma: no cover - the middleware answers these paths before routing
    raise ServiceError("this route is served by the fast path")


def _register_fast_path_operations(app: FastAPI) -> None:
    """OpenAPI entries for predict and explain: the fast path (service/fastpath.py) answers them before FastAPI
    routes anything, so these routes only document the operations (OIP infer: `_register_open_inference_protocol`)."""
    for path, summary in (
        ("/predict", "Predict with the default model"),
        ("/v1/models/{name}/predict", "Predict with the newest ready version"),
        ("/v1/models/{name}/versions/{version}/predict", "Predict with one version"),
    ):
        app.add_api_route(
            path,
            served_by_fast_path,
            methods=["POST"],
            summary=summary,
            tags=["predict"],
            response_model=schemas.PredictResponse,
            responses=ERRORS,
            openapi_extra=_fast_path_operation(path, schemas.PredictRequest),
        )

    for path, summary in (
        ("/explain", "Explain the default model's predictions"),
        ("/v1/models/{name}/explain", "Explain with the newest ready version (also KServe V1 `:explain`)"),
        ("/v1/models/{name}/versions/{version}/explain", "Explain with one version"),
    ):
        app.add_api_route(
            path,
            served_by_fast_path,
            methods=["POST"],
            summary=summary,
            description="Integrated gradients from the training mean, per row, for the predicted class and for the "
            "class named in the body. 409: this version has no explanation graph (published before explanations "
            "existed); retrain.",
            tags=["explain"],
            response_model=schemas.ExplainResponse,
            responses={**ERRORS, 409: {"model": schemas.ErrorResponse}},
            openapi_extra=_fast_path_operation(path, schemas.ExplainRequest),
        )


def _register_open_inference_protocol(app: FastAPI, gateway: Gateway) -> None:
    """OIP v2 health and metadata, and the infer operations' OpenAPI entries."""
    registry = gateway.registry

    @app.get("/v2", response_model=schemas.OipServerMetadata, tags=["open inference protocol"])
    def server_metadata():
        return schemas.OipServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    @app.get("/v2/health/live", tags=["open inference protocol"])
    def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open inference protocol"], responses={503: {"model": schemas.ErrorResponse}})
    def ready():
        if workers_ready(gateway):
            return {"ready": True}
        return JSONResponse({"error": "models are still loading", "ready": False}, status_code=503)

    @app.get(
        "/v2/models/{name}", response_model=schemas.OipModelMetadata, responses=ERRORS, tags=["open inference protocol"]
    )
    def oip_model(name: str):
        return oip_metadata(gateway, registry.get(name))

    @app.get(
        "/v2/models/{name}/versions/{version}",
        response_model=schemas.OipModelMetadata,
        responses=ERRORS,
        tags=["open inference protocol"],
    )
    def oip_model_version(name: str, version: str):
        return oip_metadata(gateway, registry.get(name, parse_version(version)))

    @app.get("/v2/models/{name}/ready", responses=ERRORS, tags=["open inference protocol"])
    def oip_model_ready(name: str):
        registry.get(name)
        return _ready_or_503(gateway)

    @app.get("/v2/models/{name}/versions/{version}/ready", responses=ERRORS, tags=["open inference protocol"])
    def oip_version_ready(name: str, version: str):
        registry.get(name, parse_version(version))
        return _ready_or_503(gateway)

    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        app.add_api_route(
            path,
            served_by_fast_path,
            methods=["POST"],
            tags=["open inference protocol"],
            summary="Infer (JSON or binary tensor data)",
            response_model=schemas.OipInferResponse,
            responses=ERRORS,
            openapi_extra=_fast_path_operation(path, schemas.OipInferRequest, binary=True),
        )


def _served_version(gateway: Gateway, name: str) -> int | None:
    try:
        return gateway.registry.get(name).version
    except ServiceError:
        return None


def _ready_or_503(gateway: Gateway) -> Response:
    if workers_ready(gateway):
        return JSONResponse({"ready": True})
    return JSONResponse({"error": "the inference worker is still loading", "ready": False}, status_code=503)


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
UNAUTHORIZED = {
    "description": "Missing or wrong API key",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def _complete_openapi(app: FastAPI, gateway: Gateway, models: tuple[type, ...]) -> None:
    """Finish the OpenAPI document with what no handler declares: the request-body schemas the fast path
    parses, and with an API key set, how to send it and the 401 every route behind it may answer."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        document = build()
        components = document.setdefault("components", {})
        schemas_ = components.setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas_.update(schema.pop("$defs", {}))
            schemas_[model.__name__] = schema
        if gateway.api_keys:
            components["securitySchemes"] = SECURITY_SCHEMES
            for path, operations in document["paths"].items():
                for operation in operations.values() if path not in PUBLIC else ():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
                    operation["responses"].setdefault("401", UNAUTHORIZED)
        return document

    app.openapi = openapi


PLAIN_503 = {"description": "Not ready", "content": {"text/plain": {"schema": {"type": "string"}}}}


def _fast_path_operation(path: str, model: type, binary: bool = False) -> dict:
    """OpenAPI for a route the fast path answers (its placeholder handler declares nothing): path parameters,
    the request body, and for Open Inference Protocol infer also the binary tensor data extension."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in ("name", "version")
        if "{" + name + "}" in path
    ]
    if binary:
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        parameters.append(
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "description": "Binary tensor data: the length of the JSON header that starts the body; the raw "
                "tensor bytes follow it.",
                "schema": {"type": "integer", "minimum": 1},
            }
        )
    return {"parameters": parameters, "requestBody": {"required": True, "content": content}}
