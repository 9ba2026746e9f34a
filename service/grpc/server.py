"""The grpc.aio server of one HTTP process, on uvicorn's event loop (the MLServer arrangement).

Message size follows the HTTP body limit (larger: RESOURCE_EXHAUSTED, from gRPC itself); answers are not limited
(a request's rows bound them). RPCs running at once are bounded too (beyond: RESOURCE_EXHAUSTED); the work they
queue is bounded by admission control, as for REST. gRPC binds with SO_REUSEPORT, so every HTTP process of the
server listens on the same port and the kernel spreads connections between them.
"""

from __future__ import annotations

import logging
import os
import signal

import grpc
from tritonclient.grpc import service_pb2_grpc

from service.dataplane.gateway import Gateway, Stop
from service.grpc.servicer import InferenceServicer

log = logging.getLogger("tabserve.grpc")

MAX_CONCURRENT_RPCS = 4096
"""Calls one HTTP process holds at once (each holds its request message until answered)."""


async def serve(gateway) -> Stop:
    """The gRPC front-end of this HTTP process (a `FrontEnd` of service/dataplane/gateway.py): started, and how to
    stop it. A port that cannot be had stops the whole server: uvicorn would take a failing lifespan for
    "unsupported" and serve on without gRPC."""
    try:
        server = await start(gateway)
    except Exception:
        log.critical("cannot serve gRPC on port %s; stopping", gateway.settings.grpc_port, exc_info=True)
        os.kill(os.getppid(), signal.SIGTERM)  # the main process: its graceful shutdown stops every process
        raise

    async def stop() -> None:
        await server.stop(gateway.server.uvicorn_graceful_timeout)  # calls in flight finish

    return stop


async def start(gateway: Gateway) -> grpc.aio.Server:
    """Bind `settings.grpc_port` on `settings.host` and start serving; a port that cannot be bound stops startup."""
    settings = gateway.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(gateway), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    server.add_insecure_port(f"{host}:{settings.grpc_port}")
    await server.start()
    log.info("serving the Open Inference Protocol over gRPC on %s:%s", host, settings.grpc_port)
    return server
