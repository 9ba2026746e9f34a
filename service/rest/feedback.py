"""`POST /v1/models/{name}/feedback`: the true labels of answered requests (service/predictions/feedback.py).

Not on the fast path: labels arrive at a fraction of the prediction rate. The body is read here, within the
same byte limit as a prediction's, before anything parses it (FastAPI would read any size first).
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from pydantic import ValidationError

from service.core import metrics, schemas
from service.core.errors import BadRequest, InvalidInput, ModelNotFound, PayloadTooLarge, ServiceError
from service.dataplane.gateway import Gateway
from service.rest.fastpath import check_content_type

CODES = {code: {"model": schemas.ErrorResponse} for code in (400, 404, 409, 413, 415, 422, 503)}


def register(app: FastAPI, gateway: Gateway) -> None:
    @app.post(
        "/v1/models/{name}/feedback",
        response_model=schemas.FeedbackResponse,
        responses=CODES,
        tags=["feedback"],
        summary="Send the true labels of answered requests",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}}}},
    )  # fmt: skip
    async def feedback(name: str, request: Request):
        """Labels for the rows of earlier answers, by their request id: live quality per version
        (`tabserve_feedback_*`), rollout decisions and retraining use them. 404 `unknown_request`: the id is not in
        the prediction log; 409: other labels were already sent for it (the same labels again answer 200)."""
        code = 500
        try:
            if name not in gateway.registry.models:
                raise ModelNotFound(f"model {name!r} not found; available: {sorted(gateway.registry.models)}",
                                    field="model", got=name)  # fmt: skip
            check_content_type(dict(request.scope["headers"]), binary_allowed=False)
            items = parse(await read_limited(request, gateway.settings.max_body_bytes))
            matched = await gateway.feedback.receive(name, items)
            code = 200
            return {"matched": matched}
        except ServiceError as e:
            code = e.status
            raise
        finally:
            metrics.feedback_requests_total.labels(name if name in gateway.registry.models else "", str(code)).inc()


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes", reason="body_too_large",
                              expected=limit, got=int(declared))  # fmt: skip
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", reason="body_too_large", expected=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse(body: bytes) -> list[schemas.Feedback]:
    """One request's labels, or `{"feedback": [...]}`, as a list; a named 400 or 422 otherwise."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    batch = isinstance(data, dict) and "feedback" in data
    try:
        if batch:
            return schemas.FeedbackBatch.model_validate(data).feedback
        return [schemas.Feedback.model_validate(data)]
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}", field=where) from None
