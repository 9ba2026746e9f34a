"""Server logs as text or JSON lines, and the access log: one JSON line per request, written off the hot path.

Every process (main, HTTP processes, spawned workers) calls `configure` at start. `TABSERVE_LOG_FORMAT=json` makes
each server log line one JSON object (python-json-logger, serialized by orjson) with the time, level, logger,
process and, while a traced request is being handled, its `trace_id` and `span_id` (service/core/tracing.py).

The access log (`TABSERVE_ACCESS_LOG=json`) goes to stdout, apart from the server's own logs on stderr. A request
only appends its fields to a bounded deque (no formatting, no lock, no write); a thread formats and writes them
every few milliseconds. When the sink cannot keep up (a blocked stdout pipe), lines beyond the bound are dropped
and counted in `tabserve_access_log_dropped_total` — a request never waits for its log line.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections import deque
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

from service.core import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
JSON_FIELDS = ["levelname", "name", "process", "message"]
RENAMED = {"levelname": "level", "name": "logger"}
ACCESS_FLUSH_SECONDS = 0.02
"""How often the access log's thread writes what requests appended (a wake-up per request would cost each one)."""


def configure(level: str, fmt: str) -> None:
    """The root logger's one handler on stderr, as text or JSON. Replaces handlers set before (uvicorn's are not:
    the server starts uvicorn without its logging config, so its loggers propagate here)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(OrjsonFormatter(JSON_FIELDS, rename_fields=RENAMED, timestamp="time"))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(trace_ids)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def trace_ids(record: logging.LogRecord) -> bool:
    """Adds the current span's ids to a record, so a log line written while serving a request names its trace."""
    ids = tracing.current_ids()
    if ids is not None:
        record.trace_id, record.span_id = ids
    return True


class AccessLog:
    """The access log of one process: `write(fields)` appends, a daemon thread formats and writes."""

    def __init__(self, bound: int, dropped, stream=None):
        self.bound = bound
        self.dropped = dropped  # a prometheus counter (service/core/metrics.py)
        self.lines: deque[dict[str, Any]] = deque()
        self.logger = logging.getLogger("tabserve.access")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(OrjsonFormatter([], timestamp="time"))
        self.logger.handlers = [handler]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tabserve-access-log")
        self._thread.start()
        atexit.register(self.close)

    def write(self, fields: dict[str, Any]) -> None:
        """Called by every request as it ends: never blocks, never raises."""
        if len(self.lines) >= self.bound:
            self.dropped.inc()
            return
        self.lines.append(fields)

    def _run(self) -> None:
        while not self._stop.wait(ACCESS_FLUSH_SECONDS):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        lines, logger = self.lines, self.logger
        while lines:
            fields = lines.popleft()
            try:
                logger.info("access", extra=fields)
            except Exception:  # a field the formatter cannot take must not stop the log
                self.dropped.inc()

    def close(self) -> None:
        """At exit: write what is still queued."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
