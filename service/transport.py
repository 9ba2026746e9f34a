"""Pipes between the HTTP processes and the inference workers, instead of LitServe's Manager queues.

LitServe sends every request and response through a `multiprocessing.Manager` process: four IPC round trips
per request plus a thread-pool hop per response, which cost more than the model (shared/REFERENCE.md).

Each HTTP process has its own `Link` to each worker: a request pipe, a response pipe and a cancellation board
(shared memory, one byte per request slot). One writer and one reader per pipe means no locks at all, which is
what lets the server survive a worker killed at any instant: a lock held by a dead process is never released,
and a message half-read from a shared pipe corrupts the stream for every other reader. Here a dead worker's
pipes belong to it alone: the HTTP process fails what that worker held (service/dispatch.py), and the worker's
replacement empties its request pipes before it announces itself in `Wiring.pids`.

Messages use `multiprocessing.Connection`'s framing (a 4-byte big-endian length, or -1 and 8 bytes for messages
over 2 GiB): workers use plain blocking `Connection` calls, the HTTP process reads and writes the same frames
without ever blocking its event loop (`FrameReader`, service/dispatch.py).

Depends on LitServe 0.2.19's private `_init_manager`, `litapi_request_queues`, `_transport`,
`_start_worker_monitoring`, `launch_single_inference_worker`, `_start_server` and `_perform_graceful_shutdown`
(pinned; each is exercised by tests/integration/test_resilience.py and tests/unit/test_transport.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import multiprocessing as mp
import os
import pickle
import socket
import struct
import threading
from contextlib import suppress
from multiprocessing.connection import wait
from typing import Any

import litserve as ls
from litserve.transport.base import MessageTransport

from service import metrics

log = logging.getLogger("tabserve.transport")

F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
"""Large pipes let a 1000-row request be written without waiting for the reader (Linux allows 1 MiB)."""

SLOTS = 4096
"""Requests one HTTP process may have outstanding at one worker; beyond it the request is refused (overloaded)."""

CANCELLED = 1
MONITOR_SECONDS = 0.2
"""How often the main process looks for dead workers to replace (LitServe's default is 2 s)."""


def _pipe(context) -> tuple[Any, Any]:
    reader, writer = context.Pipe(duplex=False)
    with suppress(OSError):  # a smaller pipe still works, it only makes writers wait sooner
        fcntl.fcntl(writer.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
    return reader, writer


class Link:
    """One HTTP process ↔ one worker: requests one way, answers the other, and a board of cancelled slots.

    A request travels as `(slot, job)`; its answer as `(slot, answer)`. The slot is the request's place on the
    board: the HTTP process sets it to CANCELLED when nobody waits for the answer any more, and the worker
    looks before it computes.
    """

    def __init__(self, context):
        self.requests_reader, self.requests_writer = _pipe(context)
        self.answers_reader, self.answers_writer = _pipe(context)
        self.board = context.RawArray(ctypes.c_uint8, SLOTS)


class Wiring:
    """Every link (`links[http_process][worker]`) and each worker's current pid (0: none announced yet).

    Made in the main process before anything forks or spawns; workers receive it as their request queue.
    """

    def __init__(self, http_processes: int, workers: int, context=None):
        context = context or mp.get_context("spawn")
        self.links = [[Link(context) for _ in range(workers)] for _ in range(http_processes)]
        self.pids = context.RawArray(ctypes.c_int, workers)

    @property
    def workers(self) -> int:
        return len(self.pids)

    def port(self, worker_id: int) -> WorkerPort:
        return WorkerPort(self, worker_id)


class WorkerPort:
    """A worker's end of its links: read requests from every HTTP process, answer each on its own link."""

    def __init__(self, wiring: Wiring, worker_id: int):
        self.links = [links[worker_id] for links in wiring.links]
        self.readers = [link.requests_reader for link in self.links]
        self.index = {reader: i for i, reader in enumerate(self.readers)}
        self.drain()
        wiring.pids[worker_id] = os.getpid()  # announce: the HTTP processes start sending from now on

    def drain(self) -> None:
        """Discard whatever a dead predecessor left unread: it may start in the middle of a message, and the HTTP
        processes have already failed every request in it."""
        for reader in self.readers:
            fd = reader.fileno()
            os.set_blocking(fd, False)
            with suppress(BlockingIOError):
                while os.read(fd, PIPE_BYTES):
                    pass
            os.set_blocking(fd, True)

    def get(self, timeout: float | None = None) -> list[tuple[int, int, Any]]:
        """`(link, slot, job)` of the requests waiting now, at most one per link; blocks up to `timeout`
        (None: until one arrives) and returns [] if none came. Blocking costs no CPU."""
        return [(self.index[r], *pickle.loads(r.recv_bytes())) for r in wait(self.readers, timeout)]

    def cancelled(self, link: int, slot: int) -> bool:
        return self.links[link].board[slot] == CANCELLED

    def answer(self, link: int, slot: int, answer: Any) -> None:
        self.links[link].answers_writer.send_bytes(pickle.dumps((slot, answer), protocol=pickle.HIGHEST_PROTOCOL))


class FrameReader:
    """Reassembles `Connection` frames from whatever a non-blocking read returned: whole, split or several."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self.buffer += data
        items, start, view = [], 0, memoryview(self.buffer)
        while len(view) - start >= 4:
            (size,) = struct.unpack_from("!i", view, start)
            header = 4
            if size == -1:  # Connection's framing for messages over 2 GiB
                if len(view) - start < 12:
                    break
                (size,) = struct.unpack_from("!Q", view, start + 4)
                header = 12
            end = start + header + size
            if end > len(view):
                break
            items.append(pickle.loads(view[start + header : end]))
            start = end
        view.release()
        del self.buffer[:start]
        return items


def frame_header(size: int) -> bytes:
    return struct.pack("!i", size) if size <= 0x7FFFFFFF else struct.pack("!iQ", -1, size)


class PipeTransport(MessageTransport):
    """What LitServe calls its response transport. Answers travel on the `Wiring`'s links (service/dispatch.py
    reads them in the event loop), so LitServe's own reader task (`areceive`) just waits forever."""

    def __init__(self, wiring: Wiring):
        self.wiring = wiring

    def send(self, item: Any, consumer_id: int) -> None:  # pragma: no cover - our loop answers on its links
        raise NotImplementedError("answers travel on service.transport.Link")

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
        """Replace any worker that dies (a crash, the OOM killer, SIGKILL), for as long as the server runs.

        LitServe's own monitor shuts the whole server down when a worker dies, or (with `restart_workers`)
        restarts it but may do so during shutdown, leaving an orphan. Requests the dead worker held are failed
        by the HTTP processes at once (service/dispatch.py), so here only the replacement matters.
        """

        def monitor() -> None:
            while not self._stopping.wait(MONITOR_SECONDS):
                for index, process in enumerate(self.inference_workers):
                    if process.is_alive():
                        continue
                    with self._launch_lock:
                        if self._stopping.is_set():
                            return
                        log.error("inference worker %d (pid %s) died with exit code %s; starting a new one",
                                  index, process.pid, process.exitcode)  # fmt: skip
                        metrics.worker_restarts_total.inc()
                        self.inference_workers[index] = self.launch_single_inference_worker(self.lit_api, index)

        threading.Thread(target=monitor, daemon=True, name="tabserve-worker-monitor").start()

    health_socket: socket.socket | None = None
    """A second listening socket (settings.health_port), served by the same HTTP processes."""

    def _start_server(self, port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs):
        if self.health_socket is not None:
            sockets = [*sockets, self.health_socket]
        return super()._start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs)

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason: str = "normal") -> None:
        with self._launch_lock:  # no replacement may start once shutdown has begun
            self._stopping.set()
        super()._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)
