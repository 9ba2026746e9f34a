"""The prediction log's writer: answered requests go into a bounded buffer, a thread writes them in batches.

Every process that runs the model (each inference worker, and the HTTP process's inline lane) has one. The
request's path only appends to the buffer (`record`: a sampling check, a length check, an append; no I/O, no
encoding); the thread wakes every `FLUSH_SECONDS`, encodes what is there and writes it in one transaction. A
slow, locked, full or unreachable database therefore never fails or delays an answer: the buffer fills, and rows
beyond its bound are dropped and counted (`tabserve_prediction_log_dropped_total{reason="buffer_full"}`) while
the thread retries with backoff, reconnecting, until the database is back; then it writes what it kept.
Retention is enforced by the same thread (`Store.enforce_retention`: once per interval across all processes).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import zlib
from collections import deque

import numpy as np
import orjson

from service.core import metrics
from service.core.job import Job
from service.core.log_policy import LogPolicy
from service.predictions.store import Store, StoreError

log = logging.getLogger("tabserve.predictions")

FLUSH_SECONDS = 0.05
"""How long an answered request may wait in the buffer: a label sent right after its answer finds it logged
(the feedback route also waits a little for records still in flight: service/predictions/feedback.py)."""
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
"""Backoff after a failed write, then every 5 s until the database answers again."""
RETENTION_EVERY = 60.0
CLOSE_SECONDS = 2.0
"""At exit, how long the last flush may take."""


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is logged at `rate`, decided by its id: every process (and a retry) decides the same."""
    return rate >= 1.0 or (zlib.crc32(request_id.encode()) & 0xFFFFFFFF) < rate * 2**32


class PredictionLog:
    """See the module docstring. `record` is called on the answering thread; everything else runs on `_run`'s."""

    def __init__(self, policy: LogPolicy):
        self.policy = policy
        self._buffer: deque[tuple] = deque()
        self._rows = 0  # rows in the buffer, bounded by policy.buffer_rows
        self._lock = threading.Lock()
        self.failures = 0  # failed attempts in a row (0 while the database takes every write)
        self._versions: dict[tuple[str, int], np.ndarray] = {}  # versions whose names are written: their classes
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tabserve-prediction-log", daemon=True)
        self._dropped = metrics.prediction_log_dropped_total.labels("buffer_full")
        self._written = metrics.prediction_log_rows_total
        self._pending = metrics.prediction_log_pending_rows

    @classmethod
    def open(cls, policy: LogPolicy) -> PredictionLog | None:
        """The running log of this process, or None when the log is off."""
        return None if policy.kind == "off" else cls(policy).start()

    def start(self) -> PredictionLog:
        self._thread.start()
        atexit.register(self.close)
        return self

    def record(self, job: Job, probabilities: np.ndarray, classes: list[str], features: list[str],
               shadow: bool = False) -> None:  # fmt: skip
        """Log one answered job (called with its result, before the answer is sent; costs ~1 µs)."""
        if not sampled(job.request_id, self.policy.rate(job.model)):
            return
        rows = len(probabilities)
        with self._lock:
            if self._rows + rows > self.policy.buffer_rows:
                self._dropped.inc(rows)
                return
            self._rows += rows
        self._buffer.append((job, probabilities, classes, features, shadow, time.time()))

    def close(self) -> None:
        """Write what is buffered (within CLOSE_SECONDS) and stop."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(CLOSE_SECONDS)

    def flushed(self, timeout: float) -> bool:
        """Wait until everything recorded so far is written (tests and benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._buffer and self._idle.is_set():
                return True
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        store, retention_at = None, 0.0
        while True:
            failures = self.failures
            stopping = self._stop.wait(FLUSH_SECONDS if failures == 0 else RETRY_SECONDS[min(failures, 4) - 1])
            batch = self._take()
            try:
                store = store or Store(self.policy.kind, self.policy.target)
                if batch:
                    self._write(store, batch)
                    self._release(batch)
                if time.monotonic() >= retention_at:
                    store.enforce_retention(self.policy.max_age, self.policy.max_rows, RETENTION_EVERY)
                    retention_at = time.monotonic() + RETENTION_EVERY
                if failures:
                    log.warning("prediction log: writing again after %d failed attempts", failures)
                self.failures = 0
            except StoreError as e:
                if failures == 0:
                    log.error("prediction log: cannot write (%s); keeping up to %d rows and retrying",
                              e, self.policy.buffer_rows)  # fmt: skip
                self.failures += 1
                self._buffer.extendleft(reversed(batch))  # kept, in order, for the next attempt
                if store is not None:
                    store.close()
                store = None
            except Exception:  # a bug: these records could never be written; count them and go on
                log.exception("prediction log: dropping %d records that cannot be written", len(batch))
                metrics.prediction_log_dropped_total.labels("unwritable").inc(sum(len(r[1]) for r in batch))
                self._release(batch)
            self._idle.set() if not self._buffer else self._idle.clear()
            if stopping:
                if store is not None:
                    store.close()
                return

    def _take(self) -> list[tuple]:
        batch = []
        while self._buffer and len(batch) < 10_000:
            batch.append(self._buffer.popleft())
        self._pending.set(self._rows)
        return batch

    def _release(self, batch: list[tuple]) -> None:
        rows = sum(len(entry[1]) for entry in batch)
        with self._lock:
            self._rows -= rows
        self._written.inc(rows)

    def _write(self, store: Store, batch: list[tuple]) -> None:
        records, versions = [], []
        for job, probabilities, classes, features, shadow, at in batch:
            key = job.model, job.version
            if key not in self._versions:
                names = orjson.dumps(features).decode(), orjson.dumps(classes).decode()
                versions.append((*key, *names))
                self._versions[key] = np.asarray(classes, dtype=object)
            predicted = self._versions[key][probabilities.argmax(axis=1)].tolist()
            records.append((
                job.request_id, job.model, job.version, int(shadow), job.protocol, at,
                len(probabilities), _blob(job.features), _blob(probabilities), orjson.dumps(predicted).decode(),
            ))  # fmt: skip
        try:
            store.insert(records, versions)
        except StoreError:
            for model, version, _, _ in versions:  # not written: write them with the next attempt
                del self._versions[model, version]
            raise


def _blob(values: np.ndarray) -> memoryview:
    """float32 little-endian bytes for a BLOB, without a copy when the array already is that (as it is on x86):
    sqlite3 and psycopg read the buffer itself."""
    return memoryview(np.ascontiguousarray(values, dtype="<f4")).cast("B")
