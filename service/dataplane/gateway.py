"""The data plane: the one object every front-end (REST, gRPC) hands its requests to.

A front-end only translates. For each request it opens a `Call` (`Gateway.call`: the request metrics), lets
`Gateway.prepare` do what every protocol needs before any work — the API key, the model lookup, the deadline —
decodes the body with the codecs, builds the `Job` (`Gateway.job`) and awaits `Gateway.submit`: admission
control (service/dataplane/admission.py), the least busy worker (service/engine/dispatch.py), the answer, and
cancellation when nobody waits for it any more. The inline lane (service/dataplane/inline.py) answers a lone small
request in this process instead.

The dispatcher and admission control exist only in the HTTP process, once its event loop runs (`start`): LitServe
forks that process from this one, and pidfds and tasks do not survive a fork. Front-ends that run beside the HTTP
server (gRPC) are started and stopped with it through `front_ends` (service/server.py sets them), so this module
knows no protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from service.codecs.explain import work_rows
from service.core import auth, deadlines, metrics, tracing
from service.core.errors import (
    MISSING_KEY,
    ModelNotFound,
    ServiceError,
    Unauthorized,
    Unavailable,
    WorkerUnavailable,
)
from service.core.job import Job
from service.core.settings import Settings
from service.dataplane.admission import Admission
from service.dataplane.inline import InlineLane
from service.dataplane.shadow import Shadows
from service.dataplane.telemetry import Telemetry
from service.engine.dispatch import Dispatcher
from service.models import control
from service.models.registry import ModelVersion, Registry
from service.models.reload import Reloader
from service.predictions.database import Database
from service.predictions.feedback import FeedbackDesk
from service.rollouts.controller import Arm, Rollouts

ANSWER_GRACE = 60.0
"""Seconds past its deadline a request waits for the worker's answer before giving up: the job may have started
just before its deadline, and a live worker always answers (a dead one is noticed at once,
service/engine/dispatch.py)."""
WORKER_LOOK_SECONDS = 0.25
WATCH_AFTER = 0.02
"""Seconds an answer may take before the client's connection is watched for a disconnect (a task per request
would cost more than most requests take; one still waiting after this is the kind worth cancelling)."""
log = logging.getLogger("tabserve.gateway")

Stop = Callable[[], Awaitable[None]]
FrontEnd = Callable[["Gateway"], Awaitable[Stop]]
"""Starts a front-end in this HTTP process, on its event loop, and returns how to stop it."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Call:
    """One request from any front-end, from its arrival to its answer: what `prepare` found, how it ended.

    A context manager around the request (`with gateway.call(...) as call`) that counts it when it ends, whatever
    happened: in flight, total by status, latency. A plain class, not a dataclass or a generator context manager:
    it is made for every request, and those cost a few microseconds more each (py-spy at c=64)."""

    __slots__ = ("arm", "arrival", "bytes_in", "bytes_out", "client", "deadline", "endpoint", "error_body", "headers",
                 "job", "method", "model", "reason", "request_id", "route", "shadow", "shadow_arm", "span", "start",
                 "status", "telemetry", "timing", "trace_token")  # fmt: skip

    def __init__(self, endpoint: str, request_id: str, headers: dict, method: str, route: str, client,
                 telemetry: Telemetry | None = None):  # fmt: skip
        self.endpoint = endpoint  # the `endpoint` label of the request metrics: predict, explain, infer, grpc_infer
        self.request_id = request_id
        self.headers = headers  # the HTTP headers or gRPC metadata (for the trace context)
        self.method, self.route, self.client = method, route, client  # for the access log and the span
        self.telemetry = telemetry
        self.span = None  # the request's server span, while tracing is on (service/dataplane/telemetry.py)
        self.trace_token = None  # what makes that span current until the call ends
        self.reason: str | None = None  # why a gRPC call was refused (REST's is in its error body)
        self.bytes_in = self.bytes_out = 0
        self.timing: bytes | None = None  # the worker's Server-Timing header value, once answered
        self.error_body: bytes | None = None  # the body of an error answer (its reason, for the access log)
        self.arrival = time.monotonic()  # CLOCK_MONOTONIC: the same in every process
        self.start = time.perf_counter()
        self.model: ModelVersion | None = None
        self.deadline = float("inf")
        self.status = 499  # nginx's "client closed request" until an answer is sent: nobody is left to answer
        self.arm: Arm | None = None  # the rollout arm that answers it, when a rollout chose its version
        self.job: Job | None = None  # the work it became (`Gateway.job`)
        self.shadow: ModelVersion | None = None  # a shadow rollout's challenger that will run a copy of it
        self.shadow_arm: Arm | None = None

    @property
    def model_name(self) -> str:
        return self.model.name if self.model else ""

    def __enter__(self) -> Call:
        metrics.requests_in_flight.inc()
        if self.telemetry is not None:
            self.telemetry.opened(self)
        return self

    def answered(self, status: int, body: bytes, headers) -> None:
        """What the front-end sends: its status and size, and what the worker said of its timing."""
        self.status, self.bytes_out = status, len(body)
        if status >= 400:
            self.error_body = body
        for name, value in headers:
            if name == b"server-timing":
                self.timing = value

    def __exit__(self, *exc) -> None:
        metrics.requests_in_flight.dec()
        name, version = self.model_name, str(self.model.version) if self.model else ""
        elapsed = time.perf_counter() - self.start
        metrics.requests_total.labels(name, version, self.endpoint, str(self.status)).inc()
        metrics.request_duration_seconds.labels(name, self.endpoint).observe(elapsed)
        if self.arm is not None:
            self.arm.observe(self.status, elapsed)
        if self.telemetry is not None:
            self.telemetry.closed(self, elapsed)


@dataclass
class Gateway:
    """Settings, models, workers and the LitServer of one HTTP process, and the steps of every request."""

    settings: Settings
    registry: Registry
    server: Any = None  # the LitServer; its wiring exists only after run()
    api_keys: frozenset[bytes] = field(default_factory=frozenset)
    reloader: Reloader | None = None
    dispatcher: Dispatcher | None = None
    admission: Admission | None = None
    inline: InlineLane | None = None
    database: Database | None = None  # the prediction log's, for this process's reads (service/predictions)
    feedback: FeedbackDesk | None = None  # labels for logged answers (service/predictions/feedback.py)
    rollouts: Rollouts | None = None  # canaries and their decisions (service/rollouts), with the prediction log on
    shadows: Shadows | None = None  # copies for shadow rollouts (service/dataplane/shadow.py)
    telemetry: Telemetry | None = None  # the access log and request spans (service/dataplane/telemetry.py)
    front_ends: list[FrontEnd] = field(default_factory=list)
    replacement: bool = False  # this HTTP process replaced one that died (set at start)
    _stops: list[Stop] = field(default_factory=list)

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
        tracing.start("http")
        self.telemetry = Telemetry(settings, index)
        # A replacement (service/engine/supervisor.py) was forked from the main process's registry as it was at startup.
        self.replacement = server.wiring.epochs[index] > 0
        self.reloader.start(look_now=self.replacement)
        self.database = Database(settings.log_policy)
        self.feedback = FeedbackDesk(self.database)
        if settings.log_policy.kind != "off":
            self.rollouts = Rollouts(settings, self.registry, self.reloader, self.database)
            self.rollouts.start()
            self.shadows = Shadows(self)
        if InlineLane.wanted(settings):
            self.inline = InlineLane(settings)
            self.inline.follow(self.reloader.generation)
        self._adopting = asyncio.get_running_loop().create_task(self._adopt_workers(), name="tabserve-adopt-workers")

    async def startup(self) -> None:
        """Once started, before serving: a replacement in `explicit` model control mode repeats the load and unload
        requests its predecessor was sent (service/models/control.py); then the other front-ends start."""
        if self.replacement and self.settings.model_control_mode == "explicit":
            await control.restore(self.registry, self.reloader)
        for start in self.front_ends:
            self._stops.append(await start(self))

    async def shutdown(self) -> None:
        """At lifespan shutdown (HTTP connections drained): stop the other front-ends, letting their calls finish."""
        stops, self._stops = self._stops, []
        for stop in stops:
            await stop()

    async def _adopt_workers(self) -> None:
        """Take up new workers (at start, and replacements) even while no request comes to look for them."""
        while True:
            self.dispatcher.refresh()
            await asyncio.sleep(WORKER_LOOK_SECONDS)

    def ready(self) -> bool:
        """Ready while at least one inference worker takes requests (it announces itself once it has loaded, or
        rejected, every version). With several workers, one being replaced does not take the server out."""
        return self.dispatcher is not None and bool(self.dispatcher.live())

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        return auth.authorized(headers, self.api_keys)  # service/core/auth.py: constant-time, management key too

    def call(self, endpoint: str, request_id: str, headers: dict, method: str, route: str, client=None) -> Call:
        """A request's record; use as `with gateway.call(...) as call:` so it is counted however it ends (`method`,
        `route`: as the access log and the span name it, e.g. POST and /v2/models/{name}/infer)."""
        return Call(endpoint, request_id, headers, method, route, client, self.telemetry)

    def prepare(self, call: Call, headers: dict[bytes, bytes], name: str | None, version: str | None,
                client_seconds: float | None = None, name_field: str | None = None) -> ModelVersion:  # fmt: skip
        """The API key, the model version asked for (`name` None: the default model; `name_field`: a protocol
        where it must be named, in that field) and the deadline: the default queue time, `X-Request-Timeout-Ms`,
        and what is left of the client's own deadline (`client_seconds`), whichever ends first."""
        if not self.authorized(headers):
            raise Unauthorized(MISSING_KEY)
        if name_field is not None and not name:
            raise ModelNotFound(f"{name_field} is empty; name a model", field=name_field)
        call.model = self.registry.get(name, parse_version(version))
        if version is None and self.rollouts is not None and self.rollouts.running:  # a canary may answer instead
            self.rollouts.route(call, headers)
        call.deadline = deadlines.from_headers(call.arrival, self.settings.max_queue_time_ms / 1000, headers)
        if client_seconds is not None:
            call.deadline = min(call.deadline, call.arrival + client_seconds)
        return call.model

    def job(self, call: Call, kind: str, features=None, infer=None, body=None, header_length=None) -> Job:
        """The prepared request as work for a worker (rows decoded, or a raw body the worker decodes)."""
        model = call.model
        protocol = "grpc" if call.endpoint.startswith("grpc") else "rest"
        call.job = Job(kind, model.name, model.version, features, call.request_id, infer, self.reloader.generation,
                       call.arrival, call.deadline, body, header_length, protocol=protocol,
                       trace=tracing.job_trace(call.span) if call.span is not None else None)  # fmt: skip
        return call.job

    def answered(self, call: Call, status: int, body: bytes) -> None:
        """The front-end sent the answer: a shadow rollout's copy may run now (service/dataplane/shadow.py)."""
        if call.shadow is not None and self.shadows is not None:
            self.shadows.after(call, status, body)

    def answer_inline(self, job: Job) -> tuple[int, bytes, list] | None:
        """The inline lane's answer (service/dataplane/inline.py) when `job` is an HTTP request it takes, else None."""
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
        if job.trace is not None:  # the worker's queue-wait span starts once admitted (no span of its own: 20 µs
            job = job._replace(trace=(*job.trace[:2], time.monotonic()))  # of work would cost 25 µs to export)
        slot, future = connection.send(job, rows, job.nbytes, job.shadow)
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


def parse_version(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 18):  # "²" is a digit to isdigit(), not to int()
        raise ModelNotFound(f"version {text!r} is not a version number", field="version", got=text)
    return int(text)


def refused(error: Exception, model: str, where: str) -> ServiceError:
    """Count a request refused before the model (any front-end); anything but a `ServiceError` is a bug, logged."""
    if not isinstance(error, ServiceError):
        log.error("unexpected error on %s", where, exc_info=error)
        error = ServiceError("internal server error")
    if isinstance(error, Unavailable):
        metrics.requests_dropped_total.labels(model, error.reason).inc()
    elif error.status < 500:
        metrics.input_rejected_total.labels(model, error.reason).inc()
    return error
