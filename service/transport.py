"""Pipes between the HTTP processes and the inference workers, instead of LitServe's Manager queues.

LitServe sends every request and response through a `multiprocessing.Manager` process: four IPC round trips
per request plus a thread-pool hop per response, which cost more than the model (shared/REFERENCE.md).

Each HTTP process has its own `Link` to each worker: a request pipe, a response pipe and a cancellation board
(shared memory, one byte per request slot). One writer and one reader per pipe means no locks at all, which is
what lets the server survive a worker killed at any instant: a lock held by a dead process is never released,
and a message half-read from a shared pipe corrupts the stream for every other reader. Here a dead worker's
pipes belong to it alone: the HTTP process fails what that worker held (service/dispatch.py), and the worker's
replacement empties its request pipes before it announces itself in `Wiring.pids`. A dead HTTP process's
replacement takes over its links the same way, by epoch (`Wiring`).

Messages use `multiprocessing.Connection`'s framing (a 4-byte big-endian length, or -1 and 8 bytes for messages
over 2 GiB). Workers write answers with plain blocking `Connection` calls and read requests without blocking
(`WorkerPort`); the HTTP process reads and writes the same frames without ever blocking its event loop
(`FrameReader`, service/dispatch.py).

Depends on LitServe 0.2.19's private `_init_manager`, `litapi_request_queues`, `_transport`,
`_start_worker_monitoring`, `launch_single_inference_worker`, `_start_server`, `_Server`, `_prepare_app_run`
and `_perform_graceful_shutdown` (pinned; each is exercised by tests/integration/test_resilience.py,
tests/integration/test_http_processes.py and tests/unit/test_transport.py).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import ctypes
import fcntl
import logging
import multiprocessing as mp
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from multiprocessing.connection import wait
from typing import Any

import litserve as ls
import uvicorn
from litserve.server import _Server
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
"""How often the main process looks for dead workers and HTTP processes to replace (LitServe's default is 2 s),
and how often an idle worker looks for a replaced HTTP process to resynchronise with."""


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
    """Every link (`links[http_process][worker]`), each worker's current pid (0: none announced yet), and the
    epochs that let a replaced HTTP process take over its predecessor's links.

    Made in the main process before anything forks or spawns; workers receive it as their request queue.

    An HTTP process that dies may leave half a request in a pipe and answers nobody reads. Its replacement
    gets the next `epochs[http_process]`; each worker, between batches (holding nothing from it), discards
    what the dead process left and acknowledges the epoch in `acks`; only then does the replacement send to
    that worker (service/dispatch.py), first discarding the answers meant for its predecessor.
    """

    def __init__(self, http_processes: int, workers: int, context=None):
        context = context or mp.get_context("spawn")
        self.links = [[Link(context) for _ in range(workers)] for _ in range(http_processes)]
        self.pids = context.RawArray(ctypes.c_int, workers)
        self.epochs = context.RawArray(ctypes.c_int, http_processes)
        self.acks = context.RawArray(ctypes.c_int, http_processes * workers)

    @property
    def workers(self) -> int:
        return len(self.pids)

    def port(self, worker_id: int) -> WorkerPort:
        return WorkerPort(self, worker_id)

    def synced(self, http_process: int, worker_id: int) -> bool:
        """Whether the worker has discarded everything the HTTP process's predecessors left on their link."""
        return self.acks[http_process * self.workers + worker_id] == self.epochs[http_process]


class WorkerPort:
    """A worker's end of its links: read requests from every HTTP process, answer each on its own link.

    Requests are read without blocking and reassembled by a `FrameReader` per link, so a message cut short by a
    dead HTTP process never stalls the worker: `resync` throws the fragment away (and what was read but not taken).
    """

    def __init__(self, wiring: Wiring, worker_id: int):
        self.wiring, self.worker_id = wiring, worker_id
        self.links = [links[worker_id] for links in wiring.links]
        self.readers = [link.requests_reader for link in self.links]
        self.index = {reader: i for i, reader in enumerate(self.readers)}
        self.frames = [FrameReader() for _ in self.links]
        self.pending: list[collections.deque] = [collections.deque() for _ in self.links]  # read, not yet taken
        for reader in self.readers:
            os.set_blocking(reader.fileno(), False)
        for link in range(len(self.links)):
            self.drain(link)
        wiring.pids[worker_id] = os.getpid()  # announce: the HTTP processes start sending from now on

    def drain(self, link: int) -> None:
        """Discard whatever a dead predecessor (worker or HTTP process) left unread on this link: it may start or
        end in the middle of a message, and every request in it has been failed already. Acknowledges the
        link's epoch (`Wiring.synced`)."""
        epoch = self.wiring.epochs[link]
        self.frames[link] = FrameReader()
        self.pending[link].clear()
        with suppress(BlockingIOError):
            while os.read(self.readers[link].fileno(), PIPE_BYTES):
                pass
        self.wiring.acks[link * self.wiring.workers + self.worker_id] = epoch

    def resync(self) -> None:
        """Drain the links whose HTTP process was replaced since the last look (call only while holding nothing
        from them: an answer written after the acknowledgement would reach the replacement)."""
        for link in range(len(self.links)):
            if not self.wiring.synced(link, self.worker_id):
                log.warning("HTTP process %d was replaced: discarding what its predecessor left", link)
                self.drain(link)

    def get(self, timeout: float | None = None) -> list[tuple[int, int, Any]]:
        """`(link, slot, job)` of the requests waiting now, at most one per link (so one busy HTTP process cannot
        crowd out the others, and the batch stops near its row budget); blocks up to `timeout` and returns [] if
        none came.

        `timeout=None` (the first request of a batch) blocks until one arrives, without CPU, waking every
        `MONITOR_SECONDS` to `resync`: nothing is held then.
        """
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if end is None:
                self.resync()
            wait_for = MONITOR_SECONDS if end is None else max(0.0, end - time.monotonic())
            for reader in wait(self.readers, 0.0 if any(self.pending) else wait_for):
                link = self.index[reader]
                self.pending[link].extend(self.frames[link].feed(_read_available(reader.fileno())))
            items = [(link, *pending.popleft()) for link, pending in enumerate(self.pending) if pending]
            if items or end is not None:
                return items

    def cancelled(self, link: int, slot: int) -> bool:
        return self.links[link].board[slot] == CANCELLED

    def answer(self, link: int, slot: int, answer: Any) -> None:
        self.links[link].answers_writer.send_bytes(pickle.dumps((slot, answer), protocol=pickle.HIGHEST_PROTOCOL))


def _read_available(fd: int) -> bytes:
    """What a non-blocking pipe holds now: b"" if nothing; EOFError once every writer has closed it."""
    chunks = []
    with suppress(BlockingIOError):
        while chunk := os.read(fd, PIPE_BYTES):
            chunks.append(chunk)
            if len(chunk) < PIPE_BYTES:
                break
        if not chunks:  # a read that returns nothing rather than raising: the end of the stream
            raise EOFError("the link's writers are gone")
    return b"".join(chunks)


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
        """Replace any worker or HTTP process that dies (a crash, the OOM killer, SIGKILL), while the server runs.

        LitServe's own monitor shuts the whole server down when a worker dies, or (with `restart_workers`)
        restarts it but may do so during shutdown, leaving an orphan; a dead HTTP process it does not notice at
        all, and the listening socket, still open here, would take connections nobody answers. Requests a dead
        worker held are failed by the HTTP processes at once (service/dispatch.py); a dead HTTP process's clients
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
    """Wraps the app uvicorn serves (service/fastpath.py's FastPath), so that its requests skip FastAPI's and
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
        self.app.response_queue_id = index  # read by the child (service/fastpath.py Gateway.start)
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
