"""Pipes between the HTTP processes and the inference workers, instead of LitServe's Manager queues.

LitServe sends every request and response through a `multiprocessing.Manager` process: four IPC round trips
per request plus a thread-pool hop per response, which cost more than the model (shared/REFERENCE.md).

Each HTTP process has its own `Link` to each worker: a request pipe, a response pipe and a cancellation board
(shared memory, one byte per request slot). One writer and one reader per pipe means no locks at all, which is
what lets the server survive a worker killed at any instant: a lock held by a dead process is never released,
and a message half-read from a shared pipe corrupts the stream for every other reader. Here a dead worker's
pipes belong to it alone: the HTTP process fails what that worker held (service/engine/dispatch.py), and the worker's
replacement empties its request pipes before it announces itself in `Wiring.pids`. A dead HTTP process's
replacement takes over its links the same way, by epoch (`Wiring`).

Messages use `multiprocessing.Connection`'s framing (a 4-byte big-endian length, or -1 and 8 bytes for messages
over 2 GiB). Workers write answers with plain blocking `Connection` calls and read requests without blocking
(`WorkerPort`); the HTTP process reads and writes the same frames without ever blocking its event loop
(`FrameReader`, service/engine/dispatch.py).
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import logging
import multiprocessing as mp
import os
import pickle
import struct
import time
from contextlib import suppress
from multiprocessing.connection import wait
from typing import Any

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
    that worker (service/engine/dispatch.py), first discarding the answers meant for its predecessor.
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
