"""The load generator: `hey` for a fixed duration, with per-request latencies (`-o csv`) turned into stats here.

hey's CSV lists every request that got an HTTP answer (status and latency) but leaves out transport errors
(refused or reset connections); the harness checks the server is still alive after each scenario to catch those.
The CSV has 0.1 ms resolution, so sub-millisecond p50s are coarse: at c=1 the harness times requests itself
(`drive_one_connection`), in microseconds.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.procs import stop_group


@dataclass
class Load:
    """What one scenario sends: a body repeated as fast as `concurrency` workers allow."""

    url: str
    body: bytes
    rows: int
    concurrency: int
    content_type: str = "application/json"
    headers: tuple[str, ...] = ()  # "Name: value", as hey takes them

    def header_dict(self) -> dict[str, str]:
        return {"Content-Type": self.content_type} | dict(h.split(": ", 1) for h in self.headers)


@dataclass
class Stats:
    requests: int  # answered with 2xx
    errors: int  # answered with anything else
    seconds: float
    rows_per_request: int
    p50_ms: float | None
    p99_ms: float | None
    statuses: dict[int, int]
    refused_p99_ms: float | None = None  # of the 503 answers (shed load)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rps * self.rows_per_request


def hey_available() -> bool:
    return shutil.which("hey") is not None


def transport_errors(load: Load, duration: float, timeout: int = 10) -> tuple[dict[int, int], dict[str, int]]:
    """hey's own summary of a run: answers by status, and the requests that got no answer at all (connection reset,
    broken pipe, timeouts), by error. hey's CSV leaves those out, so this is a run of its own."""
    with tempfile.NamedTemporaryFile(prefix="bench-body-", delete=False) as f:
        f.write(load.body)
    command = ["hey", "-z", f"{duration:g}s", "-c", str(load.concurrency), "-t", str(timeout), "-m", "POST",
               "-T", load.content_type, "-D", f.name, load.url]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=duration + timeout + 30)
    finally:
        Path(f.name).unlink(missing_ok=True)
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", result.stdout)}
    errors: dict[str, int] = {}
    for n, message in re.findall(r"^\s+\[(\d+)\]\s+(.+)$", result.stdout.split("Error distribution:")[-1], re.M):
        kind = next((k for k in ("connection reset by peer", "broken pipe", "Client.Timeout", "EOF")
                     if k in message), message[-60:])  # fmt: skip
        errors[kind] = errors.get(kind, 0) + int(n)
    if "Error distribution:" not in result.stdout:
        errors = {}
    return statuses, errors


def drive(load: Load, duration: float, timeout: int = 10) -> Stats:
    """Run hey for `duration` seconds against `load.url`, each request given up after `timeout` seconds (its
    connection closed, as an impatient client does); killed if it overruns."""
    with tempfile.NamedTemporaryFile(prefix="bench-body-", delete=False) as f:
        f.write(load.body)
    command = ["hey", "-z", f"{duration:g}s", "-c", str(load.concurrency), "-t", str(timeout), "-m", "POST"]
    command += ["-T", load.content_type, "-D", f.name, "-o", "csv"]
    for header in load.headers:
        command += ["-H", header]
    process = subprocess.Popen(
        [*command, load.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=duration + timeout + 30)
    finally:
        if process.poll() is None:
            stop_group(process.pid, grace=1)
        process.wait()
        Path(f.name).unlink(missing_ok=True)
    if process.returncode != 0:
        raise RuntimeError(f"hey exited with code {process.returncode}: {err.decode(errors='replace').strip()[:300]}")
    return parse_csv(out.decode(), load.rows, duration)


def drive_one_connection(load: Load, duration: float, timeout: float = 10) -> Stats:
    """c=1 timed here, to the microsecond: one keep-alive connection, each request sent as soon as the last one
    was answered, for `duration` seconds. hey's CSV rounds to 0.1 ms, an eighth of a one-row request on this
    machine, which decided a ≤ 1.0× bar by rounding. The client's own time is in every server's figures alike."""
    url = urllib.parse.urlsplit(load.url)
    headers = load.header_dict()
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    latencies, refused, statuses = [], [], {}
    started = time.perf_counter()
    try:
        while (sent := time.perf_counter()) < started + duration:
            connection.request("POST", url.path, load.body, headers)
            response = connection.getresponse()
            response.read()
            latency = time.perf_counter() - sent
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if 200 <= response.status < 300:
                latencies.append(latency)
            elif response.status == 503:
                refused.append(latency)
    finally:
        connection.close()
    return _stats(latencies, refused, statuses, load.rows, time.perf_counter() - started)


def parse_csv(text: str, rows: int, duration: float) -> Stats:
    """Stats from hey's CSV: rps and rows/s over the run's wall time, p50/p99 over the 2xx answers."""
    latencies, refused, statuses, end = [], [], {}, 0.0
    for record in csv.DictReader(io.StringIO(text)):
        with contextlib.suppress(KeyError, ValueError):
            latency, status, offset = (
                float(record["response-time"]),
                int(record["status-code"]),
                float(record["offset"]),
            )
            statuses[status] = statuses.get(status, 0) + 1
            end = max(end, offset + latency)
            if 200 <= status < 300:
                latencies.append(latency)
            elif status == 503:
                refused.append(latency)
    return _stats(latencies, refused, statuses, rows, max(end, duration))


def _stats(latencies: list[float], refused: list[float], statuses: dict[int, int], rows: int, seconds: float) -> Stats:
    """rps and rows/s over `seconds`; p50/p99 over the 2xx answers' latencies, p99 of the 503s (in seconds)."""
    ok = len(latencies)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (None, None)
    return Stats(
        requests=ok,
        errors=sum(statuses.values()) - ok,
        seconds=seconds,
        rows_per_request=rows,
        p50_ms=None if p50 is None else float(p50),
        p99_ms=None if p99 is None else float(p99),
        refused_p99_ms=float(np.percentile(refused, 99) * 1000) if refused else None,
        statuses=statuses,
    )
