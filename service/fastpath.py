"""The hot path: prediction requests go from raw ASGI to LitServe's request queue, without FastAPI in between.

FastAPI routing, dependency solving and pydantic on every row cost more than the model itself (shared/
REFERENCE.md), so this middleware answers the prediction routes directly: it reads the body (bounded),
validates it against the model's manifest, and only a valid request becomes a `Job` on LitServe's queue.
Its answer comes back over the response pipe (service/transport.py). Every other route falls through to FastAPI.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from service import auth, metrics, oip
from service.batching import Job
from service.errors import ModelNotFound, PayloadTooLarge, ServiceError, Unauthorized, UnsupportedMediaType
from service.instances import decode_instances
from service.registry import ModelVersion, Registry
from service.reload import Reloader
from service.settings import Settings
from service.transport import Responses

PREDICT = re.compile(r"^/(?:predict|v1/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/predict)$")
INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
PUBLIC = frozenset({"/v2/health/live", "/v2/health/ready", "/health"})
"""Routes answered without an API key: health probes must work for orchestrators that hold no secret."""

ANSWER_TIMEOUT = 60.0
log = logging.getLogger("tabserve.fastpath")


@dataclass
class Gateway:
    """What the fast path shares with the rest of the API process: settings, models, and the LitServer."""

    settings: Settings
    registry: Registry
    server: Any = None  # the LitServer; its queues exist only after run(), so they are looked up per request
    api_path: str = "/predict"
    api_keys: frozenset[bytes] = field(default_factory=frozenset)
    reloader: Reloader | None = None
    responses: Responses | None = None
    uids: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.reloader = self.reloader or Reloader(self.registry, self.settings.poll_interval)
        self.api_keys = auth.gate_keys(self.settings)

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        return auth.authorized(headers, self.api_keys)  # service/auth.py: constant-time, management key too

    async def submit(self, job: Job) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Queue a validated job for the workers (LitServe's request tuple) and wait for its answer."""
        server = self.server
        if self.responses is None:  # first request in this API process: its queues exist now
            self.responses = Responses(server._transport.channels[server.app.response_queue_id])
        uid = next(self.uids)
        future = self.responses.expect(uid)  # registered before the put, so the answer cannot arrive first
        try:
            await server._get_request_queue(self.api_path).aput(
                (server.app.response_queue_id, uid, time.monotonic(), job)
            )
            return await asyncio.wait_for(future, ANSWER_TIMEOUT)
        except TimeoutError:
            raise ServiceError("no answer from the inference worker in time", reason="timeout") from None
        finally:
            self.responses.forget(uid)


def parse_version(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 18):  # "²" is a digit to isdigit(), not to int()
        raise ModelNotFound(f"version {text!r} is not a version number", field="version", got=text)
    return int(text)


def request_ids() -> Iterator[bytes]:
    """Unique ids without a syscall per request: a random prefix per process, then a counter."""
    prefix = os.urandom(8).hex()
    return (f"{prefix}{n:016x}".encode() for n in itertools.count())


class FastPath:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app, gateway: Gateway):
        self.app = app
        self.gateway = gateway
        self.ids = request_ids()
        # Built when the forked HTTP process serves its first request, after every import and model load.
        # Move those long-lived objects out of the collector's reach: full collections over FastAPI,
        # pydantic and LitServe's heap took tens of milliseconds and showed up as p99 latency.
        gc.freeze()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":  # the HTTP process is starting: its event loop runs from here on
            self.gateway.reloader.start()
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id") or next(self.ids)
        path = scope["path"]
        if scope["method"] == "POST" and ((match := PREDICT.match(path)) or (match := INFER.match(path))):
            return await self.predict(
                "predict" if match.re is PREDICT else "infer", match, headers, request_id, receive, send
            )
        if path not in PUBLIC and not self.gateway.authorized(headers):
            error = Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
            return await _respond(
                send,
                401,
                orjson.dumps(error.body()),
                [(b"content-type", b"application/json"), (b"x-request-id", request_id)],
            )

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        return await self.app(scope, receive, send_with_id)

    async def predict(self, kind: str, match: re.Match, headers: dict, request_id: bytes, receive, send) -> None:
        """Answer one prediction request, whatever happens, and record it (metrics.py)."""
        start = time.perf_counter()
        metrics.requests_in_flight.inc()
        model = None
        try:
            if not self.gateway.authorized(headers):
                raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
            model = self.gateway.registry.get(match.group("name"), parse_version(match.group("version")))
            status, body, extra = await self.handle(kind, model, headers, request_id.decode(), receive)
        except ServiceError as e:
            status, body, extra = e.status, orjson.dumps(e.body()), [(b"content-type", b"application/json")]
            if status < 500:
                metrics.input_rejected_total.labels(model.name if model else "", e.reason).inc()
        except Exception:  # a bug, not a client mistake: log it, answer 500, keep serving
            log.exception("unexpected error on %s", match.string)
            error = ServiceError("internal server error")
            status, body, extra = 500, orjson.dumps(error.body()), [(b"content-type", b"application/json")]
        try:
            await _respond(send, status, body, [*extra, (b"x-request-id", request_id)])
        finally:
            metrics.requests_in_flight.dec()
            name, version = (model.name, str(model.version)) if model else ("", "")
            metrics.requests_total.labels(name, version, kind, str(status)).inc()
            metrics.request_duration_seconds.labels(name, kind).observe(time.perf_counter() - start)

    async def handle(self, kind: str, model: ModelVersion, headers: dict, request_id: str, receive):
        header_length = headers.get(oip.HEADER_LENGTH.encode())
        _check_content_type(headers, binary_allowed=header_length is not None)
        body = await _read_body(receive, headers, self.gateway.settings.max_body_bytes)
        if kind == "predict":
            features, infer = decode_instances(body, model.spec), None
        else:
            infer = oip.decode_infer(body, header_length.decode() if header_length else None, model.spec)
            features = infer.features
            if infer.id is None:
                infer = oip.InferRequest(features=features, id=request_id, outputs=infer.outputs)
        job = Job(kind, model.name, model.version, features, request_id, infer, self.gateway.reloader.generation)
        return await self.gateway.submit(job)


def _check_content_type(headers: dict, binary_allowed: bool) -> None:
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    allowed = {b"", b"application/json"} | ({b"application/octet-stream"} if binary_allowed else set())
    if content_type not in allowed:
        raise UnsupportedMediaType(
            f"content type {content_type.decode(errors='replace')!r} is not accepted; send application/json",
            field="content-type",
            expected="application/json",
            got=content_type.decode(errors="replace"),
        )


async def _read_body(receive, headers: dict, limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"body of {int(declared)} bytes exceeds the limit of {limit} bytes",
            reason="body_too_large",
            expected=limit,
            got=int(declared),
        )
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServiceError("client disconnected", reason="disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", reason="body_too_large", expected=limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
