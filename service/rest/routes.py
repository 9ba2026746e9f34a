"""The FastAPI routes: everything but the hot prediction path (service/rest/fastpath.py) — model listing and
metadata, health, operations — and where every route, the repository extension's and the OpenAPI entries
included, is registered.

These are FastAPI routes on LitServe's app; errors from any of them go through one handler that answers
`{"error": ...}` with the error's status.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.core import metrics, schemas
from service.core.errors import NOT_READY, ServiceError, Unavailable
from service.dataplane import metadata
from service.dataplane.gateway import Gateway, parse_version
from service.rest import feedback, openapi, repository, rollouts
from service.rest.openapi import ERRORS, PLAIN_503


def register(app: FastAPI, gateway: Gateway) -> None:
    _register_error_handlers(app)
    _register_operations(app, gateway)
    _register_models(app, gateway)
    openapi.register_predict_operations(app)
    _register_open_inference_protocol(app, gateway)
    openapi.register_infer_operations(app)
    repository.register(app, gateway, ERRORS)  # the OIP repository extension
    feedback.register(app, gateway)
    rollouts.register(app, gateway)
    openapi.complete(
        app, gateway, (schemas.PredictRequest, schemas.ExplainRequest, schemas.OipInferRequest, schemas.FeedbackRequest)
    )


def _register_error_handlers(app: FastAPI) -> None:
    """Every error answers `{"error": ..., "reason": ...}` in JSON, with its status."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        headers = {"retry-after": str(error.retry_after)} if isinstance(error, Unavailable) else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Keep the error's headers: a 405 must say which methods the route allows (`Allow`, RFC 9110), and
        # Starlette names only the first route of the path's (a path with GET, POST and DELETE has three).
        headers = error.headers
        if error.status_code == 405:
            headers = {**(headers or {}), "allow": ", ".join(_allowed(app, request.scope))}
        return JSONResponse({"error": str(error.detail), "reason": "http"}, status_code=error.status_code,
                            headers=headers)  # fmt: skip

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


def _allowed(app: FastAPI, scope: dict) -> list[str]:
    """Every method some route serves at this path."""
    methods = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.matches({**scope, "method": "GET"})[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


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
        return PlainTextResponse("ok") if gateway.ready() else PlainTextResponse("not ready", 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus_metrics(request: Request) -> Response:
        """Prometheus text format, summed over every server process (service/core/metrics.py); OpenMetrics, with
        the trace ids of traced requests as exemplars, when the scraper asks for it (`Accept`)."""
        content, content_type = metrics.render("application/openmetrics-text" in request.headers.get("accept", ""))
        return Response(content, media_type=content_type)


def _register_models(app: FastAPI, gateway: Gateway) -> None:
    """The simple API's model listing and details."""
    registry = gateway.registry

    @app.get("/v1/models", response_model=schemas.ModelsResponse, tags=["models"])
    def list_models():
        """Every model and version in the repository, with the reason a version could not be loaded."""
        return metadata.listing(gateway)

    @app.get("/v1/models/{name}", response_model=schemas.ModelDetails, responses=ERRORS, tags=["models"])
    def model_details(name: str):
        """The newest ready version: features (in order), classes, test metrics, execution provider."""
        return metadata.details(gateway, registry.get(name))

    @app.get(
        "/v1/models/{name}/versions/{version}", response_model=schemas.ModelDetails, responses=ERRORS, tags=["models"]
    )
    def version_details(name: str, version: str):
        return metadata.details(gateway, registry.get(name, parse_version(version)))


def _register_open_inference_protocol(app: FastAPI, gateway: Gateway) -> None:
    """OIP v2 health and metadata, and the infer operations' OpenAPI entries."""
    registry = gateway.registry

    @app.get("/v2", response_model=schemas.OipServerMetadata, tags=["open inference protocol"])
    def server_metadata():
        return metadata.server_metadata()

    @app.get("/v2/health/live", tags=["open inference protocol"])
    def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open inference protocol"], responses={503: {"model": schemas.ErrorResponse}})
    def ready():
        if gateway.ready():
            return {"ready": True}
        return JSONResponse({"error": NOT_READY, "ready": False}, status_code=503)

    @app.get(
        "/v2/models/{name}", response_model=schemas.OipModelMetadata, responses=ERRORS, tags=["open inference protocol"]
    )
    def oip_model(name: str):
        return metadata.oip_metadata(gateway, registry.get(name))

    @app.get(
        "/v2/models/{name}/versions/{version}",
        response_model=schemas.OipModelMetadata,
        responses=ERRORS,
        tags=["open inference protocol"],
    )
    def oip_model_version(name: str, version: str):
        return metadata.oip_metadata(gateway, registry.get(name, parse_version(version)))

    @app.get("/v2/models/{name}/ready", responses=ERRORS, tags=["open inference protocol"])
    def oip_model_ready(name: str):
        registry.get(name)
        return _ready_or_503(gateway)

    @app.get("/v2/models/{name}/versions/{version}/ready", responses=ERRORS, tags=["open inference protocol"])
    def oip_version_ready(name: str, version: str):
        registry.get(name, parse_version(version))
        return _ready_or_503(gateway)


def _ready_or_503(gateway: Gateway) -> Response:
    if gateway.ready():
        return JSONResponse({"ready": True})
    return JSONResponse({"error": NOT_READY, "ready": False}, status_code=503)
