"""The hot path: prediction requests go from raw ASGI to a worker's pipe, without FastAPI in between.

FastAPI routing, dependency solving and pydantic on every row cost more than the model itself (shared/
REFERENCE.md), so this middleware answers the prediction routes directly: admission (service/dataplane/admission.py),
the body read within a byte budget, validation against the model's manifest, a deadline (service/core/deadlines.py),
and only then a `Job` for a worker (service/engine/dispatch.py). Large bodies are not parsed here at all: the worker
decodes and validates them (service/engine/worker.py), so the event loop, and with it the health probes, never waits
behind tens of milliseconds of JSON parsing holding the GIL. While the answer is awaited, a client that
disconnects cancels its job. Every other route falls through to FastAPI.
"""

from __future__ import annotations

import gc
import re
import time

import orjson

from service.codecs import bulk_json, oip
from service.codecs.bodies import decode_job
from service.codecs.explain import require_explanation
from service.core.errors import MISSING_KEY, NOT_READY, PayloadTooLarge, Unauthorized, Unavailable, UnsupportedMediaType
from service.core.job import request_ids
from service.dataplane.gateway import Call, ClientGone, Gateway, refused

PREDICT = re.compile(
    r"^/(?:predict|v1/models/(?P<name>[^/:]+)(?::predict|/predict|/versions/(?P<version>[^/]+)/predict))$"
)
EXPLAIN = re.compile(
    r"^/(?:explain|v1/models/(?P<name>[^/:]+)(?::explain|/explain|/versions/(?P<version>[^/]+)/explain))$"
)
"""KServe V1's verb and the simple API's forms, as for predict (service/codecs/explain.py)."""
INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
HEALTH = frozenset({"/v2/health/live", "/v2/health/ready"})
"""Answered by the fast path itself (their FastAPI routes in service/rest/routes.py document them)."""
PUBLIC = frozenset({*HEALTH, "/health"})
"""Routes answered without an API key: health probes must work for orchestrators that hold no secret."""

DECODE_INLINE_BYTES = 512 * 1024
"""Bodies up to this size are decoded here (a 1000-row body, ~320 kB, in a few milliseconds, alongside the
workers' inference); larger ones by the worker, so the loop never stops for long. A thread would not do: JSON
parsing holds the GIL, and a loop starved of it stalled health probes for seconds (make stress)."""
BULK_INLINE_BYTES = 2 * 1024 * 1024
"""Simple-API bodies of rows of numbers up to this size are decoded here too: simdjson reads 2 MiB of them in
about the time orjson took for 512 KiB (service/codecs/bulk_json.py), and the worker is left the model."""

NOT_READY_BODY = orjson.dumps({"error": NOT_READY, "ready": False})
CLOSE = (b"connection", b"close")
"""Sent with a refusal that comes before a large body was read: reading megabytes only to throw them away is
what let a storm of refused uploads starve the accepted ones, so the connection is closed instead."""


class FastPath:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app, gateway: Gateway):
        self.app = app
        self.gateway = gateway
        self.health_port = gateway.settings.health_port
        self.ids = (
            request_ids()
        )  # one FastPath per HTTP process (service/engine/supervisor.py), each with its own prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":  # the forked HTTP process is starting: its event loop runs from here on
            self.gateway.start()
            # Every import and model load is done: move those long-lived objects out of the collector's reach
            # (full collections over FastAPI, pydantic and LitServe's heap took tens of milliseconds and showed
            # up as p99 latency).
            gc.freeze()
            return await self.app(scope, self._lifespan(receive), send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id") or next(self.ids)
        path = scope["path"]
        if path in HEALTH and scope["method"] == "GET":
            return await self.health(path, request_id, send)
        if self.health_port and scope["server"] and scope["server"][1] == self.health_port and path != "/metrics":
            body = b'{"error":"this port serves only /v2/health/live, /v2/health/ready and /metrics","reason":"http"}'
            return await _respond(send, 404, body, [(b"content-type", b"application/json")])
        if scope["method"] == "POST" and (
            (match := PREDICT.match(path)) or (match := INFER.match(path)) or (match := EXPLAIN.match(path))
        ):
            kind = "predict" if match.re is PREDICT else "infer" if match.re is INFER else "explain"
            return await self.predict(kind, match, headers, request_id, receive, send, scope.get("client"))
        if path not in PUBLIC and not self.gateway.authorized(headers):
            error = Unauthorized(MISSING_KEY)
            return await _respond(
                send,
                401,
                orjson.dumps(error.body()),
                [(b"content-type", b"application/json"), (b"x-request-id", request_id)],
            )

        answer = [0, 0]  # status, body bytes: for the access log

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
                answer[0] = message["status"]
            else:
                answer[1] += len(message.get("body", b""))
            await send(message)

        start = time.perf_counter()
        try:
            return await self.app(scope, receive, send_with_id)
        finally:
            if (telemetry := self.gateway.telemetry) is not None and telemetry.access is not None:
                route = scope["route"].path if "route" in scope else path
                telemetry.request(scope["method"], route, answer[0] or 499, request_id.decode(),
                                  time.perf_counter() - start, scope.get("client"), _declared_length(headers, None),
                                  answer[1])  # fmt: skip

    def _lifespan(self, receive):
        """`receive` for the lifespan: the other front-ends (gRPC) start with the HTTP process and stop before it."""

        async def receive_and_act():
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.gateway.startup()
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.shutdown()
            return message

        return receive_and_act

    async def health(self, path: str, request_id: bytes, send) -> None:
        """Liveness and readiness, answered here: no routing, no thread hop, nothing that queues behind load."""
        headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id)]
        if path == "/v2/health/live":
            return await _respond(send, 200, b'{"live":true}', headers)
        if self.gateway.ready():
            return await _respond(send, 200, b'{"ready":true}', headers)
        return await _respond(send, 503, NOT_READY_BODY, headers)

    async def predict(self, kind: str, match: re.Match, headers: dict, request_id: bytes, receive, send,
                      client) -> None:  # fmt: skip
        """Answer one prediction request, whatever happens (the gateway's `Call` records it)."""
        read = [False]  # whether the body has been read
        with self.gateway.call(kind, request_id.decode(), headers, "POST", match, client) as call:
            try:
                self.gateway.prepare(call, headers, match.group("name"), match.group("version"))
                status, body, extra = await self.handle(kind, call, headers, receive, read)
            except ClientGone:
                return
            except Exception as e:
                status, body, extra = refusal(e, call.model_name, match.string)
                if not read[0] and _declared_length(headers, None) > DECODE_INLINE_BYTES:
                    extra.append(CLOSE)  # the protocol lingers (service/rest/limits.py): the client reads this
            call.answered(status, body, extra)
            await _respond(send, status, body, [*extra, (b"x-request-id", request_id)])
            if call.shadow is not None:
                self.gateway.answered(call, call.status, body)

    async def handle(self, kind: str, call: Call, headers: dict, receive, read: list[bool]):
        gateway, settings, model = self.gateway, self.gateway.settings, call.model
        if kind == "explain":
            require_explanation(model.name, model.version, model.manifest)
        header_length = headers.get(oip.HEADER_LENGTH.encode())
        check_content_type(headers, binary_allowed=header_length is not None)
        declared = _declared_length(headers, settings.max_body_bytes)
        with gateway.admission.body(declared) as reservation:
            if declared > DECODE_INLINE_BYTES:  # small bodies are checked when queued; big ones before reading
                gateway.admission.check_room(declared)
            body = await _read_body(receive, reservation, settings.max_body_bytes)
            read[0] = True
            call.bytes_in = len(body)
        job = gateway.job(call, kind, body=body, header_length=header_length.decode() if header_length else None)
        if len(body) <= DECODE_INLINE_BYTES:
            job = call.job = decode_job(job, model.spec)
            if (answer := gateway.answer_inline(job)) is not None:
                return answer
        elif (
            kind == "predict"
            and len(body) <= BULK_INLINE_BYTES
            and (rows := bulk_json.numbers(body, model.spec)) is not None
        ):
            job = call.job = job._replace(features=rows, body=None)  # anything else of this size: the worker decodes it
        return await gateway.submit(job, _disconnected(receive))


async def _disconnected(receive) -> None:
    """Completes when the client disconnects (the body has been read, so that is all `receive` can say)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def refusal(error: Exception, model: str, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """An error as a JSON answer (a 500 only for a bug, logged), counted by why it was refused."""
    error = refused(error, model, path)
    extra = [(b"content-type", b"application/json")]
    if isinstance(error, Unavailable):
        extra.append((b"retry-after", str(error.retry_after).encode()))
    return error.status, orjson.dumps(error.body()), extra


def _declared_length(headers: dict, limit: int | None) -> int:
    declared = headers.get(b"content-length")
    if declared is None or not declared.isdigit():
        return 0
    if limit is not None and int(declared) > limit:
        raise PayloadTooLarge(
            f"body of {int(declared)} bytes exceeds the limit of {limit} bytes",
            reason="body_too_large",
            expected=limit,
            got=int(declared),
        )
    return int(declared)


def check_content_type(headers: dict, binary_allowed: bool) -> None:
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    allowed = {b"", b"application/json"} | ({b"application/octet-stream"} if binary_allowed else set())
    if content_type not in allowed:
        raise UnsupportedMediaType(
            f"content type {content_type.decode(errors='replace')!r} is not accepted; send application/json",
            field="content-type",
            expected="application/json",
            got=content_type.decode(errors="replace"),
        )


async def _read_body(receive, reservation, limit: int) -> bytes:
    """The whole body, its bytes held by `reservation` (admission control) as they arrive."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", reason="body_too_large", expected=limit)
        reservation.grow(size)
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
