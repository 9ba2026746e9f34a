"""The hot path: prediction requests go from raw ASGI to a worker's pipe, without FastAPI in between.

FastAPI routing, dependency solving and pydantic on every row cost more than the model itself (shared/
REFERENCE.md), so this middleware answers the prediction routes directly: admission (service/admission.py),
the body read within a byte budget, validation against the model's manifest, a deadline (service/deadlines.py),
and only then a `Job` for a worker (service/dispatch.py). Large bodies are not parsed here at all: the worker
decodes and validates them (service/worker.py), so the event loop, and with it the health probes, never waits
behind tens of milliseconds of JSON parsing holding the GIL. While the answer is awaited, a client that
disconnects cancels its job. Every other route falls through to FastAPI.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from service import auth, bulk_json, control, deadlines, metrics, oip
from service.admission import Admission
from service.batching import Job, decode_job
from service.dispatch import Dispatcher
from service.errors import (
    ModelNotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    WorkerUnavailable,
)
from service.explain import require_explanation, work_rows
from service.inline import InlineLane
from service.registry import ModelVersion, Registry
from service.reload import Reloader
from service.settings import Settings

PREDICT = re.compile(
    r"^/(?:predict|v1/models/(?P<name>[^/:]+)(?::predict|/predict|/versions/(?P<version>[^/]+)/predict))$"
)
EXPLAIN = re.compile(
    r"^/(?:explain|v1/models/(?P<name>[^/:]+)(?::explain|/explain|/versions/(?P<version>[^/]+)/explain))$"
)
"""KServe V1's verb and the simple API's forms, as for predict (service/explain.py)."""
INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
HEALTH = frozenset({"/v2/health/live", "/v2/health/ready"})
"""Answered by the fast path itself (their FastAPI routes in service/routes.py document them)."""
PUBLIC = frozenset({*HEALTH, "/health"})
"""Routes answered without an API key: health probes must work for orchestrators that hold no secret."""

ANSWER_GRACE = 60.0
"""Seconds past its deadline a request waits for the worker's answer before giving up: the job may have started
just before its deadline, and a live worker always answers (a dead one is noticed at once, service/dispatch.py)."""

DECODE_INLINE_BYTES = 512 * 1024
"""Bodies up to this size are decoded here (a 1000-row body, ~320 kB, in a few milliseconds, alongside the
workers' inference); larger ones by the worker, so the loop never stops for long. A thread would not do: JSON
parsing holds the GIL, and a loop starved of it stalled health probes for seconds (make stress)."""
BULK_INLINE_BYTES = 2 * 1024 * 1024
"""Simple-API bodies of rows of numbers up to this size are decoded here too: simdjson reads 2 MiB of them in
about the time orjson took for 512 KiB (service/bulk_json.py), and the worker is left the model."""

WORKER_LOOK_SECONDS = 0.25
WATCH_AFTER = 0.02
"""Seconds an answer may take before the client's connection is watched for a disconnect (a task per request
would cost more than most requests take; one still waiting after this is the kind worth cancelling)."""
CLOSE = (b"connection", b"close")
"""Sent with a refusal that comes before a large body was read: reading megabytes only to throw them away is
what let a storm of refused uploads starve the accepted ones, so the connection is closed instead."""
log = logging.getLogger("tabserve.fastpath")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass
class Gateway:
    """What the fast path shares with the rest of the HTTP process: settings, models, workers, and the LitServer.

    The dispatcher and admission control exist only in the HTTP process, once its event loop runs (`start`):
    LitServe forks that process from this one, and pidfds and tasks do not survive a fork.
    """

    settings: Settings
    registry: Registry
    server: Any = None  # the LitServer; its wiring exists only after run()
    api_keys: frozenset[bytes] = field(default_factory=frozenset)
    reloader: Reloader | None = None
    dispatcher: Dispatcher | None = None
    admission: Admission | None = None
    grpc: Any = None  # the grpc.aio server of this HTTP process (service/grpc_api), while it runs
    inline: InlineLane | None = None
    replacement: bool = False  # this HTTP process replaced one that died (set at start)

    def __post_init__(self) -> None:
        self.reloader = self.reloader or Reloader(self.registry, self.settings.poll_interval)
        self.api_keys = auth.gate_keys(self.settings)

    def start(self) -> None:
        """In the HTTP process, at ASGI lifespan startup."""
        if self.dispatcher is not None:
            return
        server, settings = self.server, self.settings
        http_processes, index = len(server.wiring.links), server.app.response_queue_id
        self.dispatcher = Dispatcher(server.wiring, index)
        self.admission = Admission(
            self.dispatcher,
            max(1, settings.max_pending_bytes // http_processes),
            max(1, settings.max_queue_rows // http_processes),
            max(1, settings.max_queue_bytes // http_processes),
        )
        self.reloader.counts_failures = index == 0
        # A replacement (service/transport.py) was forked from the main process's registry as it was at startup.
        self.replacement = server.wiring.epochs[index] > 0
        self.reloader.start(look_now=self.replacement)
        if InlineLane.wanted(settings):
            self.inline = InlineLane(settings)
            self.inline.follow(self.reloader.generation)
        self._adopting = asyncio.get_running_loop().create_task(self._adopt_workers(), name="tabserve-adopt-workers")

    async def restore_model_control(self) -> None:
        """A replacement in `explicit` model control mode repeats the load and unload requests its predecessor was
        sent (service/control.py), before it serves anything."""
        if self.replacement and self.settings.model_control_mode == "explicit":
            await control.restore(self)

    async def start_grpc(self) -> None:
        """Serve the Open Inference Protocol over gRPC from this HTTP process too (settings.grpc_port).

        grpc is imported and its server made only here, in the forked HTTP process with its loop running: a gRPC
        server alive across LitServe's fork hangs the child. Every HTTP process binds the port (SO_REUSEPORT).
        """
        if self.settings.grpc_port and self.grpc is None:
            from service.grpc_api import server

            try:
                self.grpc = await server.start(self)
            except Exception:  # uvicorn would take a failing lifespan for "unsupported" and serve on without gRPC
                log.critical("cannot serve gRPC on port %s; stopping", self.settings.grpc_port, exc_info=True)
                os.kill(os.getppid(), signal.SIGTERM)  # the main process: its graceful shutdown stops every process
                raise

    async def stop(self) -> None:
        """At lifespan shutdown (HTTP connections drained): stop taking RPCs, let those in flight finish."""
        if self.grpc is not None:
            grpc, self.grpc = self.grpc, None
            await grpc.stop(self.server.uvicorn_graceful_timeout)

    async def _adopt_workers(self) -> None:
        """Take up new workers (at start, and replacements) even while no request comes to look for them."""
        while True:
            self.dispatcher.refresh()
            await asyncio.sleep(WORKER_LOOK_SECONDS)

    def ready(self) -> bool:
        return self.dispatcher is not None and bool(self.dispatcher.live())

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        return auth.authorized(headers, self.api_keys)  # service/auth.py: constant-time, management key too

    def answer_inline(self, job: Job) -> tuple[int, bytes, list] | None:
        """The answer of the inline lane (service/inline.py) when `job` is an HTTP request it takes, else None."""
        if self.inline is None:
            return None
        self.inline.follow(self.reloader.generation)
        requests = self.server.http_protocol.requests  # uvicorn's request tasks, this one's included
        if not self.inline.takes(job, alone=len(requests) == 1 and self.dispatcher.idle()):
            return None
        return self.inline.answer(job)

    async def submit(self, job: Job, client_gone: Awaitable | None = None) -> tuple[int, bytes, list]:
        """Queue a validated job at the least busy worker and wait for its answer.

        `client_gone` completes when nobody waits any more (an HTTP disconnect): the job is then cancelled
        on the worker's board, and skipped if it has not run yet.
        """
        now = time.monotonic()
        if now > job.deadline:
            raise deadlines.expired(job.arrival, job.deadline, now)
        rows = job.rows
        if job.kind == "explain" and job.features is not None:  # undecoded bodies count in bytes instead
            rows = work_rows(rows, job.target, self.registry.get(job.model, job.version).manifest)
        connection = self.admission.worker_for(rows, job.nbytes)
        slot, future = connection.send(job, rows, job.nbytes)
        loop = asyncio.get_running_loop()
        hung = WorkerUnavailable("no answer from the inference worker in time")  # a 503, never a 500
        timer = loop.call_at(job.deadline + ANSWER_GRACE, _fail, future, hung)
        watches: list[asyncio.Future] = []

        def watch() -> None:  # only for answers that take a while: most arrive before a task would be worth it
            watches.append(asyncio.ensure_future(client_gone))
            watches[0].add_done_callback(lambda _: _fail(future, ClientGone()))

        later = loop.call_later(WATCH_AFTER, watch) if client_gone is not None else None
        try:
            return await future
        except (ClientGone, asyncio.CancelledError):  # an HTTP client left, or a gRPC call was cancelled
            connection.cancel(slot)
            raise
        finally:
            timer.cancel()
            if later is not None:
                later.cancel()
            for each in watches:
                each.cancel()
            if client_gone is not None and not watches:
                client_gone.close()  # never awaited


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


async def _disconnected(receive) -> None:
    """Completes when the client disconnects (the body has been read, so that is all `receive` can say)."""
    while (await receive())["type"] != "http.disconnect":
        pass


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
        self.health_port = gateway.settings.health_port
        self.ids = request_ids()  # one FastPath per HTTP process (service/transport.py), each with its own prefix

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
            return await self.predict(kind, match, headers, request_id, receive, send)
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

    def _lifespan(self, receive):
        """`receive` for the lifespan: the gRPC server starts with the HTTP process and stops before it ends."""

        async def receive_and_act():
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.gateway.restore_model_control()
                await self.gateway.start_grpc()
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.stop()
            return message

        return receive_and_act

    async def health(self, path: str, request_id: bytes, send) -> None:
        """Liveness and readiness, answered here: no routing, no thread hop, nothing that queues behind load."""
        headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id)]
        if path == "/v2/health/live":
            return await _respond(send, 200, b'{"live":true}', headers)
        if self.gateway.ready():
            return await _respond(send, 200, b'{"ready":true}', headers)
        body = b'{"error":"no inference worker is ready (still loading, or being replaced)","ready":false}'
        return await _respond(send, 503, body, headers)

    async def predict(self, kind: str, match: re.Match, headers: dict, request_id: bytes, receive, send) -> None:
        """Answer one prediction request, whatever happens, and record it (metrics.py)."""
        start, arrival = time.perf_counter(), time.monotonic()
        metrics.requests_in_flight.inc()
        model, status = None, 499  # nginx's "client closed request": nobody is left to answer
        read = [False]  # whether the body has been read
        try:
            try:
                if not self.gateway.authorized(headers):
                    raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
                model = self.gateway.registry.get(match.group("name"), parse_version(match.group("version")))
                status, body, extra = await self.handle(
                    kind, model, headers, request_id.decode(), arrival, receive, read
                )
            except ClientGone:
                return
            except Exception as e:
                status, body, extra = refusal(e, model.name if model else "", match.string)
                if not read[0] and _declared_length(headers, None) > DECODE_INLINE_BYTES:
                    extra.append(CLOSE)
            await _respond(send, status, body, [*extra, (b"x-request-id", request_id)])
        finally:
            metrics.requests_in_flight.dec()
            name, version = (model.name, str(model.version)) if model else ("", "")
            metrics.requests_total.labels(name, version, kind, str(status)).inc()
            metrics.request_duration_seconds.labels(name, kind).observe(time.perf_counter() - start)

    async def handle(self, kind: str, model: ModelVersion, headers: dict, request_id: str, arrival: float, receive,
                     read: list[bool]):  # fmt: skip
        gateway, settings = self.gateway, self.gateway.settings
        if kind == "explain":
            require_explanation(model.name, model.version, model.manifest)
        header_length = headers.get(oip.HEADER_LENGTH.encode())
        _check_content_type(headers, binary_allowed=header_length is not None)
        deadline = deadlines.from_headers(arrival, settings.max_queue_time_ms / 1000, headers)
        declared = _declared_length(headers, settings.max_body_bytes)
        with gateway.admission.body(declared) as reservation:
            if declared > DECODE_INLINE_BYTES:  # small bodies are checked when queued; big ones before reading
                gateway.admission.check_room(declared)
            body = await _read_body(receive, reservation, settings.max_body_bytes)
            read[0] = True
        length = header_length.decode() if header_length else None
        job = Job(kind, model.name, model.version, None, request_id, None, gateway.reloader.generation, arrival,
                  deadline, body, length)  # fmt: skip
        if len(body) <= DECODE_INLINE_BYTES:
            job = decode_job(job, model.spec)
            if (answer := gateway.answer_inline(job)) is not None:
                return answer
        elif (
            kind == "predict"
            and len(body) <= BULK_INLINE_BYTES
            and (rows := bulk_json.numbers(body, model.spec)) is not None
        ):
            job = job._replace(features=rows, body=None)  # anything else of this size: the worker decodes it
        return await gateway.submit(job, _disconnected(receive))


def refusal(error: Exception, model: str, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """An error as a JSON answer (a 500 only for a bug, logged), counted by why it was refused."""
    error = refused(error, model, path)
    extra = [(b"content-type", b"application/json")]
    if isinstance(error, Unavailable):
        extra.append((b"retry-after", str(error.retry_after).encode()))
    return error.status, orjson.dumps(error.body()), extra


def refused(error: Exception, model: str, where: str) -> ServiceError:
    """Count a request refused before the model (REST or gRPC); anything but a `ServiceError` is a bug, logged."""
    if not isinstance(error, ServiceError):
        log.error("unexpected error on %s", where, exc_info=error)
        error = ServiceError("internal server error")
    if isinstance(error, Unavailable):
        metrics.requests_dropped_total.labels(model, error.reason).inc()
    elif error.status < 500:
        metrics.input_rejected_total.labels(model, error.reason).inc()
    return error


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
