"""Pipes between the HTTP process and the inference workers, instead of LitServe's Manager queues.

LitServe sends every request and response through a `multiprocessing.Manager` process: four IPC round trips
per request plus a thread-pool hop per response, which cost more than the model (shared/REFERENCE.md).
`multiprocessing.Queue` is not much better here: its feeder thread (and any reader thread) must win the GIL
from a busy event loop, which can take a whole switch interval (5 ms) per handoff.

So each direction is a bare pipe (`Channel`): writers pickle and write under a lock shared by all writers;
workers block in `recv` (no CPU while idle); and the HTTP process reads responses in its event loop
(`loop.add_reader`, non-blocking reads), with no thread at all, and never blocks that loop on a write.
The Manager still holds LitServe's worker status and shutdown event, which are not on the per-request path.

Depends on LitServe 0.2.19's private `_init_manager`, `litapi_request_queues` and `_transport` (pinned).
"""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing as mp
import os
import pickle
import queue
import struct
import termios
from contextlib import suppress
from typing import Any

import litserve as ls
from litserve.transport.base import MessageTransport

F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
PIPE_BYTES = 1 << 20
"""Large pipes let a 1000-row request be written without waiting for the reader (Linux allows 1 MiB)."""


class Channel:
    """A one-way pipe of pickled messages for many writers and many readers (locks make each message whole).

    Messages use `multiprocessing.Connection`'s framing (a 4-byte big-endian length, or -1 and 8 bytes for
    messages over 2 GiB), so `Responses` can read the same stream incrementally from a non-blocking fd.
    """

    def __init__(self, context=None):
        context = context or mp.get_context("spawn")
        self._reader, self._writer = context.Pipe(duplex=False)
        self._read_lock, self._write_lock = context.Lock(), context.Lock()
        with suppress(OSError):  # a smaller pipe still works, it only blocks writers sooner
            fcntl.fcntl(self._writer.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        self._capacity = fcntl.fcntl(self._writer.fileno(), F_GETPIPE_SZ)

    def put(self, item: Any) -> None:
        self._send(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))

    async def aput(self, item: Any) -> None:
        """`put` from an event loop, which must never block: it is also what reads the workers' answers.

        Blocking here could deadlock: a worker blocked writing answers to a full response pipe stops reading
        requests, so a loop blocked writing a request to a full request pipe would never read those answers.
        A message that fits in the pipe's free space is written at once; a larger one is written by a thread.
        """
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        if self._fits(len(data)) and self._write_lock.acquire(block=False):
            try:
                self._writer.send_bytes(data)
            finally:
                self._write_lock.release()
        else:
            await asyncio.to_thread(self._send, data)

    def _send(self, data: bytes) -> None:
        with self._write_lock:
            self._writer.send_bytes(data)

    def _fits(self, size: int) -> bool:
        """Whether `size` more bytes (plus framing) fit in the pipe now. Valid while this process is the
        only writer, as the single HTTP process is for the request pipe: readers only make more room."""
        fd = self._writer.fileno()
        queued = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        return queued + size + 12 <= self._capacity

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Like `queue.Queue.get`: blocks in the kernel while empty, raises `queue.Empty` on timeout."""
        if not self._read_lock.acquire(block, timeout):
            raise queue.Empty
        try:
            if (not block or timeout is not None) and not self._reader.poll(timeout if block else 0):
                raise queue.Empty
            data = self._reader.recv_bytes()
        finally:
            self._read_lock.release()
        return pickle.loads(data)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def fileno(self) -> int:
        return self._reader.fileno()


class FrameReader:
    """Reassembles `Channel` messages from whatever a non-blocking read returned: whole, split or several."""

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


class PipeTransport(MessageTransport):
    """LitServe's response transport: one `Channel` per API server.

    Workers send through it as usual. On the API side, `Responses` reads the channel in the event loop and
    resolves each request's future directly, so LitServe's own reader task (`areceive`) just waits forever.
    """

    def __init__(self, channels: list[Channel]):
        self.channels = channels

    def send(self, item: Any, consumer_id: int) -> None:
        self.channels[consumer_id].put(item)

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        await asyncio.get_running_loop().create_future()  # never resolved: `Responses` delivers instead

    def close(self, send_sentinel: bool = True) -> None:
        if send_sentinel:
            for channel in self.channels:
                with suppress(Exception):
                    channel.put(None)

    def __reduce__(self):
        return (PipeTransport, (self.channels,))


class Responses:
    """In one API process: futures of the requests waiting for a worker, resolved as answers arrive.

    The event loop watches the response pipe and reads it without blocking (`FrameReader` keeps partial
    messages), so answers need no thread and no wake-up of one.
    """

    def __init__(self, channel: Channel):
        self.fd = channel.fileno()
        self.frames = FrameReader()
        self.waiting: dict[int, asyncio.Future] = {}
        os.set_blocking(self.fd, False)  # uvloop does this too; a blocking read would stall every request
        asyncio.get_running_loop().add_reader(self.fd, self._deliver)

    def expect(self, uid: int) -> asyncio.Future:
        future = self.waiting[uid] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, uid: int) -> None:
        self.waiting.pop(uid, None)

    def _read(self) -> bytes:
        chunks = []
        with suppress(BlockingIOError):
            while chunk := os.read(self.fd, PIPE_BYTES):
                chunks.append(chunk)
        return b"".join(chunks)

    def _deliver(self) -> None:
        for item in self.frames.feed(self._read()):
            if item is None:  # LitServe's shutdown sentinel
                continue
            uid, (data, _status, _kind, _worker) = item
            future = self.waiting.pop(uid, None)
            if future is not None and not future.done():
                future.set_result(data)


class PipeLitServer(ls.LitServer):
    """LitServer whose requests and responses travel over `Channel`s instead of Manager queues."""

    def _init_manager(self, num_api_servers: int):
        manager = super()._init_manager(num_api_servers)
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = Channel()
        self._transport = PipeTransport([Channel() for _ in range(num_api_servers)])
        return manager
