"""Pipes between the HTTP process and the inference workers, instead of LitServe's Manager queues.

LitServe sends every request and response through a `multiprocessing.Manager` process: four IPC round trips
per request plus a thread-pool hop per response, which cost more than the model (shared/REFERENCE.md).
`multiprocessing.Queue` is not much better here: its feeder thread (and any reader thread) must win the GIL
from a busy event loop, which can take a whole switch interval (5 ms) per handoff.

So each direction is a bare pipe (`Channel`): writers pickle and write in their own thread, under a lock
shared by all writers; workers block in `recv` (no CPU while idle); and the HTTP process reads responses in
its event loop (`loop.add_reader`), with no thread at all. The Manager still holds LitServe's worker status
and shutdown event, which are not on the per-request path.

Depends on LitServe 0.2.19's private `_init_manager`, `litapi_request_queues` and `_transport` (pinned).
"""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing as mp
import pickle
import queue
from contextlib import suppress
from typing import Any

import litserve as ls
from litserve.transport.base import MessageTransport

F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
"""Large pipes let a 1000-row request be written without waiting for the reader (Linux allows 1 MiB)."""


class Channel:
    """A one-way pipe of pickled messages for many writers and many readers (locks make each message whole)."""

    def __init__(self, context=None):
        context = context or mp.get_context("spawn")
        self._reader, self._writer = context.Pipe(duplex=False)
        self._read_lock, self._write_lock = context.Lock(), context.Lock()
        with suppress(OSError):  # a smaller pipe still works, it only blocks writers sooner
            fcntl.fcntl(self._writer.fileno(), F_SETPIPE_SZ, PIPE_BYTES)

    def put(self, item: Any) -> None:
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        with self._write_lock:
            self._writer.send_bytes(data)

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

    def ready(self) -> bool:
        return self._reader.poll(0)

    def read_ready(self) -> list[Any]:
        """Every message already in the pipe (for a single reader driven by its event loop)."""
        items = []
        while self._reader.poll(0):
            items.append(pickle.loads(self._reader.recv_bytes()))
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
    """In one API process: futures of the requests waiting for a worker, resolved as answers arrive."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.waiting: dict[int, asyncio.Future] = {}
        asyncio.get_running_loop().add_reader(channel.fileno(), self._deliver)

    def expect(self, uid: int) -> asyncio.Future:
        future = self.waiting[uid] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, uid: int) -> None:
        self.waiting.pop(uid, None)

    def _deliver(self) -> None:
        for item in self.channel.read_ready():
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
