"""The HTTP process's side of the links to the workers: send jobs, receive answers, notice deaths — all in the
event loop, which is never blocked.

Each `WorkerConnection` owns one `Link` (service/engine/links.py). Jobs are written without blocking: what the pipe
cannot take now waits in a backlog that the loop flushes when the pipe has room. Answers are read the same way.
A worker's death is seen at once through a pidfd (the kernel makes it readable when the process exits): what
the dead worker had already answered is delivered, everything else it held fails with a 503 straight away,
and nothing is sent to that worker again until its replacement announces a new pid.

`Dispatcher` sends each job to the live worker with the least work outstanding (bytes of payload: a decoded
matrix, or a raw body the worker decodes), and knows how much work waits (for admission control,
service/dataplane/admission.py) and how fast it drains (for `Retry-After`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import time
from contextlib import suppress
from typing import Any

from service.core.errors import WorkerUnavailable
from service.engine.links import CANCELLED, PIPE_BYTES, SLOTS, FrameReader, Link, Wiring, frame_header

log = logging.getLogger("tabserve.dispatch")


class WorkerConnection:
    def __init__(self, link: Link, worker_id: int):
        self.link, self.worker_id = link, worker_id
        self.loop = asyncio.get_running_loop()
        self.write_fd = link.requests_writer.fileno()
        self.read_fd = link.answers_reader.fileno()
        for fd in (self.write_fd, self.read_fd):
            os.set_blocking(fd, False)
        self.loop.add_reader(self.read_fd, self._on_answers)
        self.frames = FrameReader()
        self.backlog: collections.deque[memoryview] = collections.deque()
        self.waiting: dict[int, tuple[asyncio.Future, int, int]] = {}  # slot → (future, rows, bytes)
        self.free = list(range(SLOTS - 1, -1, -1))
        self.rows = self.nbytes = 0  # outstanding: sent and not yet answered (rows of raw bodies are unknown)
        self.shadows: set[int] = set()  # slots of shadow jobs (service/dataplane/shadow.py) among `waiting`
        self.pid = 0
        self.pidfd: int | None = None
        self.answered_rows = self.answered_bytes = 0

    @property
    def alive(self) -> bool:
        return self.pidfd is not None

    def adopt(self, pid: int) -> None:
        """A worker announced itself on this link (at start, or as a dead one's replacement), and has discarded
        what this HTTP process's predecessor left (service/engine/links.py `Wiring`): so discard its answers too."""
        self._read()
        self.frames = FrameReader()
        self.pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # it died before we looked: wait for its replacement
            return
        self.loop.add_reader(self.pidfd, self._on_death)
        log.info("inference worker %d (pid %d) takes requests", self.worker_id, pid)

    def send(self, job: Any, rows: int, nbytes: int, shadow: bool = False) -> tuple[int, asyncio.Future]:
        """Queue `job` (`rows` and `nbytes` of work) for this worker; returns its slot and the future its answer
        resolves."""
        slot = self.free.pop()
        if shadow:
            self.shadows.add(slot)
        self.link.board[slot] = 0
        future = self.loop.create_future()
        self.waiting[slot] = (future, rows, nbytes)
        self.rows += rows
        self.nbytes += nbytes
        data = pickle.dumps((slot, job), protocol=pickle.HIGHEST_PROTOCOL)
        self._write([memoryview(frame_header(len(data))), memoryview(data)])
        return slot, future

    def cancel(self, slot: int) -> None:
        """Nobody waits for this answer any more: the worker skips the job if it has not started it."""
        if slot in self.waiting:
            self.link.board[slot] = CANCELLED

    def _write(self, pieces: list[memoryview]) -> None:
        if self.backlog:
            self.backlog.extend(pieces)
            return
        try:
            written = os.writev(self.write_fd, pieces)
        except BlockingIOError:
            written = 0
        for piece in pieces:
            if written >= len(piece):
                written -= len(piece)
                continue
            self.backlog.append(piece[written:])
            written = 0
        if self.backlog:
            self.loop.add_writer(self.write_fd, self._flush)

    def _flush(self) -> None:
        try:
            written = os.writev(self.write_fd, list(self.backlog)[:64])
        except BlockingIOError:
            return
        while written:
            head = self.backlog[0]
            if written < len(head):
                self.backlog[0] = head[written:]
                break
            written -= len(head)
            self.backlog.popleft()
        if not self.backlog:
            self.loop.remove_writer(self.write_fd)

    def _read(self) -> bytes:
        chunks = []
        with suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, PIPE_BYTES):
                chunks.append(chunk)
                if len(chunk) < PIPE_BYTES:
                    break  # drained for now; the loop calls again when more comes (one read, not a second EAGAIN)
        return b"".join(chunks)

    def _on_answers(self) -> None:
        """Resolve the answers that arrived; until a worker is adopted, whatever comes is for nobody here (a dead
        predecessor's requests, or the rest of a dead worker's message)."""
        data = self._read()
        if not self.alive:
            return
        for slot, answer in self.frames.feed(data):
            self._resolve(slot, answer)

    def _resolve(self, slot: int, answer: Any) -> None:
        future, rows, nbytes = self.waiting.pop(slot, (None, 0, 0))
        if future is None:
            return
        self.shadows.discard(slot)
        self.free.append(slot)
        self.rows -= rows
        self.nbytes -= nbytes
        self.answered_rows += rows
        self.answered_bytes += nbytes
        if not future.done():
            future.set_result(answer)

    def _on_death(self) -> None:
        """Deliver what the worker finished, fail the rest now, and forget its half-written messages."""
        self._on_answers()
        self.frames = FrameReader()
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None
        if self.backlog:
            self.loop.remove_writer(self.write_fd)
            self.backlog.clear()
        held = list(self.waiting.items())
        log.error("inference worker %d (pid %d) died holding %d requests", self.worker_id, self.pid, len(held))
        self.shadows.clear()
        for slot, (future, _, _) in held:
            self.waiting.pop(slot)
            self.free.append(slot)
            if not future.done():
                future.set_exception(WorkerUnavailable("the inference worker died while holding this request"))
        self.rows = self.nbytes = 0


class Dispatcher:
    """This HTTP process's connections to every worker, and where the next job goes."""

    def __init__(self, wiring: Wiring, http_process: int):
        self.wiring, self.http_process = wiring, http_process
        self.connections = [WorkerConnection(link, i) for i, link in enumerate(wiring.links[http_process])]
        self.rows_rate, self.bytes_rate = DrainRate(), DrainRate()

    def refresh(self) -> None:
        """Adopt workers that announced themselves since the last look and are in step with this HTTP process (two
        reads of shared memory per worker)."""
        for connection in self.connections:
            pid = self.wiring.pids[connection.worker_id]
            if pid and pid != connection.pid and self.wiring.synced(self.http_process, connection.worker_id):
                connection.adopt(pid)

    def live(self) -> list[WorkerConnection]:
        self.refresh()
        return [c for c in self.connections if c.alive]

    def idle(self) -> bool:
        """No worker holds anything from this HTTP process (but shadow work: the inline lane answers beside it)."""
        return not any(len(c.waiting) > len(c.shadows) for c in self.connections)

    def least_loaded(self) -> WorkerConnection:
        """Among the workers adopted so far (`refresh` runs every 0.25 s and on readiness probes; a death is seen
        at once through its pidfd)."""
        live = [c for c in self.connections if c.alive] or self.live()  # none yet: look again now
        if not live:
            raise WorkerUnavailable("no inference worker is running (one is being started)")
        return min(live, key=lambda c: c.nbytes)

    def seconds_to_drain(self) -> float:
        """How long the work queued now takes at the rate answers came back lately (0 when unknown)."""
        rows_rate = self.rows_rate.update(sum(c.answered_rows for c in self.connections))
        bytes_rate = self.bytes_rate.update(sum(c.answered_bytes for c in self.connections))
        rows = sum(c.rows for c in self.connections) / rows_rate if rows_rate else 0.0
        nbytes = sum(c.nbytes for c in self.connections) / bytes_rate if bytes_rate else 0.0
        return max(rows, nbytes)


class DrainRate:
    """A running total's rate over roughly the last few seconds, sampled as it is asked for."""

    WINDOW = 5.0

    def __init__(self):
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, total: int) -> float:
        now = time.monotonic()
        if not self.samples or now - self.samples[-1][0] >= 0.1:
            self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.WINDOW:
            self.samples.popleft()
        then, before = self.samples[0]
        return (total - before) / (now - then) if now - then >= 0.2 else 0.0
