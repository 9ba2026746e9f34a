"""The OpenAPI document's additions: the operations the fast path answers (documented by placeholder routes), the
request-body schemas it parses, and with an API key set, how to send it and the 401 every route behind it may answer.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.core import schemas
from service.core.errors import ServiceError
from service.dataplane.gateway import Gateway
from service.rest.fastpath import PUBLIC

ERRORS = {code: {"model": schemas.ErrorResponse} for code in (400, 404, 413, 415, 422, 503)}
"""The error answers every model route documents."""
PLAIN_503 = {"description": "Not ready", "content": {"text/plain": {"schema": {"type": "string"}}}}


# The handler of the documentation-only routes. No docstring: FastAPI would make it their description; and
# its name is in their OpenAPI operationIds, which generated clients use.
def served_by_fast_path():  # pragma: no cover - the middleware answers these paths before routing
    raise ServiceError("this route is served by the fast path")


def register_predict_operations(app: FastAPI) -> None:
    """OpenAPI entries for predict and explain: the fast path (service/rest/fastpath.py) answers them before FastAPI
    routes anything, so these routes only document the operations."""
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


def register_infer_operations(app: FastAPI) -> None:
    """OpenAPI entries for Open Inference Protocol infer, JSON or binary tensor data (the fast path answers it)."""
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


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
UNAUTHORIZED = {
    "description": "Missing or wrong API key",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def complete(app: FastAPI, gateway: Gateway, models: tuple[type, ...]) -> None:
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
