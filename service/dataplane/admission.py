"""Admission control: refuse work early and cheaply rather than accept more than the server can finish in time.

Bounds per HTTP process, all on by default:

- **bytes of request bodies being read** (`max_pending_bytes`). A body's declared length is reserved before a
  byte of it is read, so a storm of large bodies is refused from its headers alone; memory held for bodies
  never exceeds the bound (plus one body, which is always let in when nothing else is pending). A body is also
  refused unread when the workers' queues could not take it beside the bodies already being read.
- **work waiting at each worker**, in rows (`max_queue_rows`) and in bytes of payload (`max_queue_bytes`: a
  decoded matrix, or a large raw body the worker decodes itself), split evenly between the HTTP processes,
  each of which owns its share. A job goes to the live worker with the least work outstanding; if that
  worker already holds work and the job would take it past a bound, the request is refused. A worker with
  nothing outstanding always takes the job, so a request larger than a bound is still served when idle.

A refusal is a 503 with `reason: "overloaded"` and `Retry-After`: the seconds the queued work takes to drain at
the rate answers have been coming back lately (at least 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from service.core.errors import Overloaded
from service.engine.dispatch import Dispatcher, WorkerConnection

MAX_RETRY_AFTER = 30


class Reservation:
    """Bytes of one body, held from its headers until it is decoded; grows when the body is longer than said."""

    def __init__(self, admission: Admission):
        self.admission = admission
        self.bytes = 0

    def grow(self, size: int) -> None:
        if size > self.bytes:
            self.admission.take_bytes(size - self.bytes)
            self.bytes = size


class Admission:
    def __init__(self, dispatcher: Dispatcher, max_pending_bytes: int, max_queue_rows: int, max_queue_bytes: int):
        self.dispatcher = dispatcher
        self.max_pending_bytes = max_pending_bytes
        self.max_queue_rows, self.max_queue_bytes = max_queue_rows, max_queue_bytes
        self.pending_bytes = 0

    def take_bytes(self, size: int) -> None:
        if self.pending_bytes and self.pending_bytes + size > self.max_pending_bytes:
            raise self.overloaded(
                f"{self.pending_bytes} bytes of request bodies are being read or decoded; "
                f"the bound is {self.max_pending_bytes} (TABSERVE_MAX_PENDING_BYTES)"
            )
        self.pending_bytes += size

    @contextmanager
    def body(self, declared: int) -> Iterator[Reservation]:
        """Hold a body's bytes while it is read and decoded; refused at once if they would pass the bound."""
        reservation = Reservation(self)
        reservation.grow(declared)
        try:
            yield reservation
        finally:
            self.pending_bytes -= reservation.bytes

    def check_room(self, nbytes: int) -> None:
        """Before reading a body: refuse if the workers' queues have no room for it beside the bodies already being
        read (those will be queued in a moment). Reading a body only to refuse it afterwards wastes the reads
        that the accepted requests are waiting for."""
        worker = self.worker_for(0, nbytes)
        live = self.dispatcher.live()
        room = sum(max(0, self.max_queue_bytes - w.nbytes) for w in live)
        coming = self.pending_bytes  # includes this body's own reservation
        if worker.nbytes and coming > room:
            raise self.overloaded(
                f"{coming} bytes of request bodies are being read for {room} bytes of room left in the "
                f"inference workers' queues (TABSERVE_MAX_QUEUE_BYTES)"
            )

    def worker_for(self, rows: int, nbytes: int) -> WorkerConnection:
        """The worker to take this work, or `Overloaded` (or `WorkerUnavailable` with none alive)."""
        worker = self.dispatcher.least_loaded()
        if worker.rows and worker.rows + rows > self.max_queue_rows:
            raise self.overloaded(
                f"{worker.rows} rows of work are queued at the least busy inference worker; this request's {rows} "
                f"would pass the bound of {self.max_queue_rows} (TABSERVE_MAX_QUEUE_ROWS; an explained row is one "
                f"row of work per path point)"
            )
        if worker.nbytes and worker.nbytes + nbytes > self.max_queue_bytes:
            raise self.overloaded(
                f"{worker.nbytes} bytes of requests are queued at the least busy inference worker; this "
                f"request's {nbytes} would pass the bound of {self.max_queue_bytes} (TABSERVE_MAX_QUEUE_BYTES)"
            )
        if not worker.free:
            raise self.overloaded("too many requests are queued at every inference worker")
        return worker

    def retry_after(self) -> int:
        """Seconds until the work queued now would have drained, at the rate answers came back lately."""
        return max(1, min(MAX_RETRY_AFTER, math.ceil(self.dispatcher.seconds_to_drain())))

    def overloaded(self, message: str) -> Overloaded:
        return Overloaded(f"server overloaded: {message}; retry later", retry_after=self.retry_after())
