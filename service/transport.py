"""Plain multiprocessing queues between the HTTP process and the inference workers, instead of the Manager's.

LitServe sends every request and response through a `multiprocessing.Manager` process: four IPC round trips
per request plus a thread-pool hop per response, which cost more than the model (shared/REFERENCE.md).
Here requests go over one `multiprocessing.Queue` (a pipe) per LitAPI, and responses over one queue per API
server, read by one long-lived thread that hands each message to the event loop. The Manager still holds
LitServe's worker status and shutdown event, which are not on the per-request path.

Depends on LitServe 0.2.19's private `_init_manager`, `litapi_request_queues` and `_transport` (pinned).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
from contextlib import suppress
from typing import Any

import litserve as ls
from litserve.transport.base import MessageTransport


class PipeTransport(MessageTransport):
    def __init__(self, queues: list):
        self._queues = queues
        self._inbox: asyncio.Queue | None = None

    def send(self, item: Any, consumer_id: int) -> None:
        self._queues[consumer_id].put(item)

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        if self._inbox is None:
            self._inbox = asyncio.Queue()
            loop, queue, inbox = asyncio.get_running_loop(), self._queues[consumer_id], self._inbox

            def pump() -> None:
                while True:
                    try:
                        item = queue.get()
                    except (EOFError, OSError):
                        return
                    loop.call_soon_threadsafe(inbox.put_nowait, item)

            threading.Thread(target=pump, name=f"responses-{consumer_id}", daemon=True).start()
        return await self._inbox.get()

    def close(self, send_sentinel: bool = True) -> None:
        if send_sentinel:
            for queue in self._queues:
                with suppress(Exception):
                    queue.put_nowait(None)

    def __reduce__(self):
        return (PipeTransport, (self._queues,))


class PipeLitServer(ls.LitServer):
    """LitServer with `PipeTransport` for responses and multiprocessing queues for requests."""

    def _init_manager(self, num_api_servers: int):
        manager = super()._init_manager(num_api_servers)
        spawn = mp.get_context("spawn")  # the workers are spawned; their queues must come from the same context
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = spawn.Queue()
        self._transport = PipeTransport([spawn.Queue() for _ in range(num_api_servers)])
        return manager
