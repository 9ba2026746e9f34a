"""Assemble and run the server: LitServer + the inference worker + the fast path + the other routes.

Process model (LitServe's): this main process, a queue manager, `workers` spawned inference workers holding
the ONNX Runtime sessions, and `http_processes` forked HTTP processes sharing the listening sockets. A worker
that dies is replaced (service/engine/supervisor.py). Shutdown on SIGINT or SIGTERM goes through LitServe's graceful
path, so in-flight requests finish and no child outlives the server.
"""

from __future__ import annotations

import logging
import os
import signal

import litserve as ls
import uvicorn
from fastapi.routing import APIRoute
from starlette.middleware.gzip import GZipMiddleware

from service.core import metrics
from service.core.settings import Settings
from service.dataplane import metadata
from service.dataplane.gateway import Gateway, Stop
from service.engine.supervisor import PipeLitServer
from service.engine.worker import InferenceAPI
from service.grpc.port import check_bindable
from service.models import control
from service.models.registry import Registry
from service.models.reload import Reloader
from service.rest import routes
from service.rest.fastpath import FastPath
from service.rest.limits import protocol_for

log = logging.getLogger("tabserve")
GRACEFUL_SECONDS = 10


def build(settings: Settings) -> ls.LitServer:
    registry = Registry.load(
        settings.repository, settings.device, settings.max_rows_per_request, settings.default_model, sessions=False
    )
    record_startup(registry)
    gateway = Gateway(settings, registry, reloader=Reloader(registry, control.polling_interval(settings)))
    api = InferenceAPI(settings)
    server = PipeLitServer(
        api,
        accelerator="cpu",  # devices are ONNX Runtime's business (settings.device), not LitServe's torch probe
        workers_per_device=settings.workers,
        restart_workers=True,  # a dead worker is replaced (PipeLitServer's monitor), never fatal
    )
    # LitServe compresses every response over 1 kB; prediction bodies are small or binary, and gzip costs more
    # CPU than it saves on loopback and in-cluster networks.
    server.app.user_middleware = [m for m in server.app.user_middleware if m.cls is not GZipMiddleware]
    # LitServe's own POST route for the LitAPI: the fast path answers that path, the documented route replaces it.
    server.app.router.routes = [
        r for r in server.app.router.routes if not (isinstance(r, APIRoute) and r.path == api.api_path)
    ]
    server.http_protocol = protocol_for(settings)
    if settings.grpc_port:  # the HTTP processes bind it once forked; a port that cannot be had stops startup here
        try:
            check_bindable(settings.host, settings.grpc_port)
        except OSError as e:
            raise SystemExit(f"error: {e}") from None
        gateway.front_ends.append(serve_grpc)
    if settings.health_port:
        server.health_socket = uvicorn.Config(app=None, host=settings.host, port=settings.health_port).bind_socket()
    # The fast path is the outermost ASGI layer: prediction requests skip FastAPI, Starlette and their middleware
    # (it catches its own errors); every other request passes through to the full app.
    server.outermost = lambda app: FastPath(app, gateway)
    server.uvicorn_graceful_timeout = GRACEFUL_SECONDS
    gateway.server = server
    routes.register(server.app, gateway)
    return server


async def serve_grpc(gateway: Gateway) -> Stop:
    """Serve the Open Inference Protocol over gRPC from each HTTP process too (settings.grpc_port).

    grpc is imported and its server made only here, in the forked HTTP process with its loop running: a gRPC
    server alive across LitServe's fork hangs the child. Every HTTP process binds the port (SO_REUSEPORT).
    """
    from service.grpc import server

    return await server.serve(gateway)


def record_startup(registry: Registry) -> None:
    """Metrics of the first look at the repository: the build, and versions refused at load (counted once, here;
    later refusals are counted by the HTTP process's reloader)."""
    metrics.build_info.labels(metadata.SERVER_VERSION).set(1)
    for entry in registry.entries():
        if entry.state != "READY":
            metrics.model_load_failures_total.labels(entry.name, entry.reason_code).inc()


def _stop_on_sigterm() -> None:
    """LitServe handles SIGINT gracefully but dies on SIGTERM and orphans its children: route one to the other.

    Only in this process: forked children inherit Python handlers and must keep the default behaviour.
    """
    main_pid = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # A server started in the background by a non-interactive shell inherits SIGINT as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def serve(settings: Settings) -> None:
    settings.configure_logging()
    control.forget_requests()  # a metrics folder given by the user may hold those of an earlier server
    server = build(settings)
    _stop_on_sigterm()
    log.info(
        "serving %s on http://%s:%s (HTTP processes: %d, workers: %d)",
        settings.repository, settings.host, settings.port, settings.http_processes, settings.workers,
    )  # fmt: skip
    server.run(
        host=settings.host,
        port=settings.port,
        num_api_servers=settings.http_processes,
        generate_client_file=False,
        log_level="warning" if settings.log_level in ("debug", "info") else settings.log_level,
        access_log=False,  # tabserve writes its own (settings.access_log, service/dataplane/telemetry.py)
        log_config=None,  # uvicorn's loggers propagate to the root handler: text or JSON (service/core/logs.py)
        http=server.http_protocol,
    )
