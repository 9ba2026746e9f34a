"""Servers as subprocesses: start each in its own session, wait until ready, measure idle CPU, and always stop
the whole group (LitServe forks and spawns children; a SIGTERM to its main process alone orphans them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class NotAvailable(Exception):
    """The server could not be started or never became ready; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of `GET url`, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


@contextlib.contextmanager
def running(command: list[str], ready_url: str, log: Path, timeout: float, cwd: Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:  # fmt: skip
    """Start `command`, yield it once `ready_url` answers 200, and stop its whole process group on the way out.

    `start_new_session` puts the server and every child it makes in one group (and away from the terminal's
    Ctrl-C, which the harness catches and turns into this `finally`).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **env} if env else None)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while http_status(ready_url, timeout=1.0) != 200:
            if process.poll() is not None:
                raise NotAvailable(f"exited with code {process.returncode}: {_tail(log) or 'no output'}")
            if time.monotonic() > deadline:
                raise NotAvailable(f"not ready after {timeout:.0f} s: {_tail(log) or 'no output'}")
            time.sleep(0.1)
        yield process
    finally:
        stop_group(process.pid)
        process.wait()


def stop_group(root: int, grace: float = 10.0) -> None:
    """SIGINT to the server's group (a clean shutdown for uvicorn and LitServe), then SIGKILL to whatever of the
    group or of the process tree is left after `grace`: nothing the server started may outlive the benchmark.
    """
    members = set(tree_cpu_ticks(root))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(root, signal.SIGINT)
    deadline = time.monotonic() + grace
    while _alive(root, members) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _alive(root, members):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(root, members) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pgid: int, members: set[int]) -> list[int]:
    """Live (non-zombie) processes of the group or of `members`. The leader's zombie is reaped by `Popen.wait`."""
    me = os.getpid()
    return [pid for pid, s in _stats().items() if (s[2] == pgid or pid in members) and s[0] != "Z" and pid != me]


def _stats() -> dict[int, tuple[str, int, int, int, int]]:
    """Every process: pid -> (state, ppid, pgid, session, utime+stime ticks), from /proc/<pid>/stat."""
    result = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        # After the command name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        result[int(entry)] = (
            fields[0],
            int(fields[1]),
            int(fields[2]),
            int(fields[3]),
            int(fields[11]) + int(fields[12]),
        )
    return result


def tree_cpu_ticks(root: int) -> dict[int, int]:
    """CPU ticks used so far by `root` and every descendant (by parent links, or by session for orphans)."""
    stats = _stats()
    return {pid: stats[pid][4] for pid in _tree(root, stats) if pid in stats}


def _tree(root: int, stats: dict[int, tuple]) -> set[int]:
    members = {pid for pid, s in stats.items() if s[3] == root} | {root}
    grew = True
    while grew:
        more = {pid for pid, s in stats.items() if s[1] in members} - members
        members |= more
        grew = bool(more)
    return members


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and every descendant now (VmRSS from /proc/<pid>/status; 0 for gone ones)."""
    total = 0
    for pid in _tree(root, _stats()):
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds a process tree used between two `tree_cpu_ticks` readings (processes that ended in between
    are not counted: their last ticks are gone with them)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLOCK_TICKS


def idle_cpu_percent(root: int, seconds: float = 2.0) -> float:
    """Percent of one core the idle server tree burns over `seconds` (a busy-polling loop shows ~100)."""
    before, start = tree_cpu_ticks(root), time.monotonic()
    time.sleep(seconds)
    after, elapsed = tree_cpu_ticks(root), time.monotonic() - start
    return 100.0 * cpu_seconds_between(before, after) / elapsed
