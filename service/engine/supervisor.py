"""Every override of LitServe's private machinery, in one place: tabserve's process model on LitServe's server.

`PipeLitServer` replaces LitServe's Manager queues with the pipes of service/engine/links.py
(`_init_manager`), keeps the server alive when a worker or an HTTP process dies by replacing it
(`_start_worker_monitoring`), forks its HTTP processes one at a time so that a replacement starts the same way
(`_start_server`, using `_prepare_app_run` and `_Server`), and lets no replacement start once shutdown has begun
(`_perform_graceful_shutdown`). It also reads `_inference_workers_config_for_api`, `launch_single_inference_worker`,
`litapi_request_queues` and `_transport`.

LitServe is pinned (constraints.txt); tests/unit/test_supervisor.py fails when any of these changes in it, and
tests/integration/test_resilience.py and tests/integration/test_http_processes.py run them for real.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import multiprocessing as mp
import socket
import threading
from collections.abc import Callable
from typing import Any

import litserve as ls
import uvicorn
from litserve.server import _Server
from litserve.transport.base import MessageTransport

from service.core import metrics
from service.engine.links import MONITOR_SECONDS, Wiring

log = logging.getLogger("tabserve.supervisor")


class PipeTransport(MessageTransport):
    """What LitServe calls its response transport. Answers travel on the `Wiring`'s links (service/engine/dispatch.py
    reads them in the event loop), so LitServe's own reader task (`areceive`) just waits forever."""

    def __init__(self, wiring: Wiring):
        self.wiring = wiring

    def send(self, item: Any, consumer_id: int) -> None:  # pragma: no cover - our loop answers on its links
        raise NotImplementedError("answers travel on service.engine.links.Link")

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        await asyncio.get_running_loop().create_future()  # never resolved

    def close(self, send_sentinel: bool = True) -> None:
        """Nothing to flush: workers are stopped by signal, HTTP processes by uvicorn's graceful shutdown."""


class PipeLitServer(ls.LitServer):
    """LitServer wired with `Link`s instead of Manager queues, whose dead workers are replaced, never fatal."""

    def _init_manager(self, num_api_servers: int):
        manager = super()._init_manager(num_api_servers)
        workers = sum(len(self._inference_workers_config_for_api(api.api_path)) for api in self.litapi_connector)
        self.wiring = Wiring(num_api_servers, workers)
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = self.wiring
        self._transport = PipeTransport(self.wiring)
        self._stopping = threading.Event()
        self._launch_lock = threading.Lock()
        return manager

    def _start_worker_monitoring(self, manager, uvicorn_workers) -> None:
        """Replace any worker or HTTP process that dies (a crash, the OOM killer, SIGKILL), while the server runs.

        LitServe's own monitor shuts the whole server down when a worker dies, or (with `restart_workers`)
        restarts it but may do so during shutdown, leaving an orphan; a dead HTTP process it does not notice at
        all, and the listening socket, still open here, would take connections nobody answers. Requests a dead
        worker held are failed by the HTTP processes at once (service/engine/dispatch.py); a dead HTTP process's clients
        have lost their connections with it. Here only the replacements matter.
        """

        def new_worker(index: int) -> None:
            self.inference_workers[index] = self.launch_single_inference_worker(self.lit_api, index)

        def new_http_process(index: int) -> None:
            self.wiring.epochs[index] += 1  # before it starts: it waits for every worker to acknowledge
            uvicorn_workers[index] = self._launch_http_process(index)

        def monitor() -> None:
            while not self._stopping.wait(MONITOR_SECONDS):
                for index, process in enumerate(self.inference_workers):
                    if not process.is_alive():
                        self._replace("inference worker", index, process, metrics.worker_restarts_total, new_worker)
                for index, process in list(uvicorn_workers.items()):
                    if not process.is_alive():
                        self._replace("HTTP process", index, process, metrics.http_process_restarts_total,
                                      new_http_process)  # fmt: skip

        threading.Thread(target=monitor, daemon=True, name="tabserve-worker-monitor").start()

    def _replace(self, what: str, index: int, process, counter, start) -> None:
        with self._launch_lock:
            if self._stopping.is_set():
                return
            log.error("%s %d (pid %s) died with exit code %s; starting a new one", what, index, process.pid,
                      process.exitcode)  # fmt: skip
            counter.inc()
            start(index)

    health_socket: socket.socket | None = None
    """A second listening socket (settings.health_port), served by the same HTTP processes."""

    outermost: Callable[[Any], Any] = staticmethod(lambda app: app)
    """Wraps the app uvicorn serves (service/rest/fastpath.py's FastPath), so that its requests skip FastAPI's and
    Starlette's own `__call__` (FastAPI reads its telemetry settings from the environment on every request)."""

    def _start_server(self, port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs):
        """LitServe's, one HTTP process at a time so that the monitor can start a replacement the same way."""
        if uvicorn_worker_type != "process":
            raise ValueError("tabserve runs its HTTP servers as forked processes (api_server_worker_type='process')")
        if self.health_socket is not None:
            sockets = [*sockets, self.health_socket]
        self._http_process_args = port, log_level, sockets, kwargs
        return {index: self._launch_http_process(index) for index in range(num_uvicorn_servers)}

    def _launch_http_process(self, index: int) -> mp.Process:
        """Fork HTTP process `index`: uvicorn serving a copy of the app on the shared sockets, on link `index`.

        A replacement is forked by the monitor thread; the child keeps only that thread, which the interpreter
        makes its main thread, so uvicorn's signal handlers install as usual.
        """
        port, log_level, sockets, kwargs = self._http_process_args
        self.app.response_queue_id = index  # read by the child (service/dataplane/gateway.py Gateway.start)
        app = copy.copy(self.app)
        self._prepare_app_run(app)
        config = uvicorn.Config(app=self.outermost(app), host="0.0.0.0", port=port, log_level=log_level,
                                timeout_graceful_shutdown=self.uvicorn_graceful_timeout, **kwargs)  # fmt: skip
        server = _Server(config=config)
        process = mp.get_context("fork").Process(target=server.run, args=(index, sockets), name=f"LitServer-{index}")
        process.start()
        return process

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason: str = "normal") -> None:
        with self._launch_lock:  # no replacement may start once shutdown has begun
            self._stopping.set()
        super()._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)
