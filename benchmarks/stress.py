"""`make stress`: tabserve under overload, abandoned requests, a worker kill, slow clients and a soak.

Loopback only, bounded in time (about 6 minutes) and stops by itself. Every phase runs against a real
`python -m service` with its default settings on the digits model, plus a health port as the Kubernetes
manifests set it; hey drives the load while threads watch: two probe `GET /v2/health/live` on a fresh
connection every 100 ms (as a kubelet would), one on the health port and one on the main port (where probes wait
in line with every client connection), and one samples the memory of the whole process tree (the sum of each
process's proportional set size, so pages shared after the fork are counted once). Results: one table on
stdout and `benchmarks/results/stress.{json,md}`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks import model
from benchmarks.loadgen import Load, Stats, drive, transport_errors
from benchmarks.procs import free_port, running, tree_cpu_ticks

RESULTS = model.ROOT / "benchmarks" / "results"
STORM_ROWS, STORM_CLIENTS, STORM_SECONDS = 5000, 128, 20
ANNOUNCED = re.compile(r"inference worker (\d+) \(pid (\d+)\) takes requests")


def tree_mib(root: int) -> float:
    """Memory of `root` and its descendants: the sum of their proportional set sizes, in MiB."""
    total = 0
    for pid in tree_cpu_ticks(root):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    return total / 1024


class Watch:
    """Liveness latency and peak memory while a phase runs (two daemon threads, stopped on exit)."""

    def __init__(self, port: int, root: int):
        self.ports, self.root = (port + 1, port), root  # the health port, the main port
        self.live_ms: dict[int, list[float]] = {port: [] for port in self.ports}
        self.peak_mib = 0.0
        self.stop = threading.Event()

    def __enter__(self) -> Watch:
        targets = [lambda p=p: self._probe(p) for p in self.ports] + [self._sample]
        self.threads = [threading.Thread(target=f, daemon=True) for f in targets]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _probe(self, port: int) -> None:
        while not self.stop.wait(0.1):
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/v2/health/live")
                ok = connection.getresponse().status == 200
                connection.close()
            except OSError:
                ok = False
            self.live_ms[port].append((time.perf_counter() - started) * 1000 if ok else 5000.0)

    def _sample(self) -> None:
        while not self.stop.wait(0.2):
            self.peak_mib = max(self.peak_mib, tree_mib(self.root))

    def live_p99_ms(self, main: bool = False) -> float:
        latencies = self.live_ms[self.ports[1] if main else self.ports[0]]
        return float(np.percentile(latencies, 99)) if latencies else float("nan")


@dataclass
class Phase:
    name: str
    goodput_rps: float  # 2xx answers per second
    p99_ms: float | None  # of the 2xx answers
    refused_p99_ms: float | None  # of the 503 answers, as the client saw them (including its upload)
    statuses: dict[int, int]
    live_p99_ms: float  # on the health port
    live_main_p99_ms: float  # on the main port
    peak_mib: float
    note: str = ""


def phase(name: str, stats: Stats, watch: Watch, note: str = "") -> Phase:
    return Phase(
        name, stats.rps, stats.p99_ms, stats.refused_p99_ms, stats.statuses, watch.live_p99_ms(),
        watch.live_p99_ms(main=True), watch.peak_mib, note,
    )  # fmt: skip


def storm_body() -> bytes:
    """5,000 digits rows with noise: about 2.6 MB of JSON, the issue's storm."""
    rows = model.digits_rows(STORM_ROWS) + np.random.default_rng(0).normal(0, 0.5, (STORM_ROWS, 64))
    return json.dumps({"instances": np.round(rows, 5).tolist()}).encode()


def one_row_latency_ms(port: int, body: bytes) -> float:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/predict", body, {"content-type": "application/json"})
    status = connection.getresponse().status
    connection.close()
    return (time.perf_counter() - started) * 1000 if status == 200 else float("inf")


class SlowClients:
    """`idle` sockets that never send and `trickling` ones that send a header byte every 0.5 s, reopened
    whenever the server closes them, for as long as the context lasts."""

    def __init__(self, port: int, idle: int = 256, trickling: int = 64):
        self.port, self.idle, self.trickling = port, idle, trickling
        self.stop = threading.Event()
        self.closed_by_server = 0

    def __enter__(self) -> SlowClients:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        idle = [self._open() for _ in range(self.idle)]
        trickling = [self._open() for _ in range(self.trickling)]
        message = b"POST /predict HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 10_000
        sent = 0
        while not self.stop.wait(0.5):
            for group in (idle, trickling):
                for i, sock in enumerate(group):
                    try:
                        sock.recv(4096)  # an answer (408) or b"": either way the server is closing it
                    except BlockingIOError:
                        continue  # still open
                    except OSError:
                        pass
                    sock.close()
                    self.closed_by_server += 1
                    group[i] = self._open()
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.send(message[sent % len(message) : sent % len(message) + 1])
            sent += 1
        for sock in idle + trickling:
            sock.close()


def worker_pid(log: Path, index: int) -> int:
    pids = {int(i): int(p) for i, p in ANNOUNCED.findall(log.read_text(errors="replace"))}
    return pids[index]


def port_pair() -> int:
    """A free port whose successor is free too: the server's port and its health port."""
    while True:
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port + 1))
            return port


def serve(repository: Path, port: int, log: Path, *flags: str):
    command = [sys.executable, "-m", "service", "--repository", str(repository), "--port", str(port),
               "--health-port", str(port + 1), "--grpc-port", "0", *flags]  # fmt: skip
    return running(command, f"http://127.0.0.1:{port}/v2/health/ready", log, 120, model.ROOT)


def overload_phases(repository: Path, bodies: dict[str, bytes], out: dict) -> list[Phase]:
    port, log = port_pair(), RESULTS / "stress-server.log"
    url = f"http://127.0.0.1:{port}/predict"
    storm = Load(url, bodies["storm"], STORM_ROWS, STORM_CLIENTS)
    one = Load(url, bodies["one"], 1, 16)
    phases = []
    with serve(repository, port, log) as server:
        time.sleep(2)
        out["idle_mib"] = tree_mib(server.pid)
        for name, timeout in (("storm, patient clients", 60), ("storm, impatient clients (3 s)", 3)):
            with Watch(port, server.pid) as watch:
                stats = drive(storm, STORM_SECONDS, timeout=timeout)
            after = one_row_latency_ms(port, bodies["one"])
            phases.append(phase(name, stats, watch, f"1-row request right after: {after:.1f} ms"))
            out.setdefault("after_storm_ms", []).append(after)
            # hey's CSV leaves out requests that got no answer: a second, shorter storm counts them
            statuses, errors = transport_errors(storm, STORM_SECONDS / 2, timeout)
            out.setdefault("storm_transport_errors", {})[name] = {"statuses": statuses, "errors": errors}
        with Watch(port, server.pid) as watch:
            stats = drive(Load(url, bodies["one"], 1, 1024), 10)
        phases.append(phase("flood, 1 row, c=1024", stats, watch))
        with Watch(port, server.pid) as watch:
            base = drive(one, 8)
        phases.append(phase("1 row, c=16 (baseline)", base, watch))
        with Watch(port, server.pid) as watch, SlowClients(port) as slow:
            stats = drive(one, 8)
        phases.append(phase("1 row, c=16 + 256 idle + 64 trickling sockets", stats, watch,
                            f"{slow.closed_by_server} slow sockets closed by the server"))  # fmt: skip
        out["slow_ratio"] = stats.rps / base.rps if base.rps else 0.0
        out["exited"] = server.poll() is not None
    return phases


def unlingering_phase(repository: Path, bodies: dict[str, bytes], out: dict) -> Phase:
    """The patient storm again, on a server that closes refused connections at once (`--lingering-close-seconds
    0`): the same run's goodput and transport errors without the lingering close, to compare."""
    port, log = port_pair(), RESULTS / "stress-server-unlingering.log"
    storm = Load(f"http://127.0.0.1:{port}/predict", bodies["storm"], STORM_ROWS, STORM_CLIENTS)
    with serve(repository, port, log, "--lingering-close-seconds", "0") as server:
        time.sleep(2)
        with Watch(port, server.pid) as watch:
            stats = drive(storm, STORM_SECONDS, timeout=60)
        statuses, errors = transport_errors(storm, STORM_SECONDS / 2, 60)
        out["unlingering_transport_errors"] = {"statuses": statuses, "errors": errors}
    note = f"transport errors in a {STORM_SECONDS / 2:.0f} s storm: {sum(errors.values())} ({errors or 'none'})"
    return phase("storm, patient clients, lingering close off (to compare)", stats, watch, note)


def kill_phase(repository: Path, bodies: dict[str, bytes], out: dict) -> Phase:
    port, log = port_pair(), RESULTS / "stress-server-kill.log"
    url = f"http://127.0.0.1:{port}/predict"
    with serve(repository, port, log, "--workers", "2") as server:
        time.sleep(2)
        victim = worker_pid(log, 0)
        killer = threading.Timer(4, os.kill, (victim, signal.SIGKILL))
        with Watch(port, server.pid) as watch:
            killer.start()
            stats = drive(Load(url, bodies["hundred"], 100, 16), 12)
        replaced = worker_pid(log, 0) != victim
        out["kill_replaced"], out["kill_exited"] = replaced, server.poll() is not None
    return phase("worker SIGKILL under load (2 workers, 100 rows, c=16)", stats, watch,
                 f"worker replaced: {replaced}")  # fmt: skip


def soak_phase(repository: Path, bodies: dict[str, bytes], out: dict, seconds: float) -> Phase:
    port, log = port_pair(), RESULTS / "stress-server-soak.log"
    url = f"http://127.0.0.1:{port}/predict"
    mixed = [Load(url, bodies["one"], 1, 16), Load(url, bodies["hundred"], 100, 16)]
    with serve(repository, port, log) as server:
        for load in mixed:  # warm-up: every code path and batch shape seen once
            drive(load, 15)
        warm = tree_mib(server.pid)
        results: list[Stats] = []
        with Watch(port, server.pid) as watch:
            threads = [threading.Thread(target=lambda ld=ld: results.append(drive(ld, seconds))) for ld in mixed]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        end = tree_mib(server.pid)
        out["soak_growth"] = end / warm - 1
        out["soak_exited"] = server.poll() is not None
    statuses: dict[int, int] = {}
    for stats in results:
        for code, n in stats.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
    total = Stats(sum(s.requests for s in results), sum(s.errors for s in results), seconds, 1,
                  None, max(s.p99_ms or 0 for s in results), statuses)  # fmt: skip
    return phase(f"soak {seconds:.0f} s, c=32 (1-row and 100-row)", total, watch,
                 f"memory after warm-up {warm:.0f} MiB, at the end {end:.0f} MiB")  # fmt: skip


def verdicts(phases: list[Phase], out: dict) -> list[tuple[str, str, bool]]:
    patient, impatient = phases[0], phases[1]
    unlingering = next(p for p in phases if p.name.startswith("storm, patient clients, lingering close off"))
    storms = phases[:2]
    kept = patient.goodput_rps / unlingering.goodput_rps if unlingering.goodput_rps else 0.0
    codes = {code for p in phases for code in p.statuses}
    ratio = impatient.goodput_rps / patient.goodput_rps if patient.goodput_rps else 0.0
    peak = max(p.peak_mib for p in storms)
    refused = max(p.refused_p99_ms or 0.0 for p in storms)
    return [
        ("impatient goodput ≥ 60% of patient", f"{ratio:.0%}", ratio >= 0.6),
        ("1-row request right after the storm < 100 ms", f"{max(out['after_storm_ms']):.1f} ms",
         max(out["after_storm_ms"]) < 100),
        ("liveness p99 ≤ 100 ms during the storms (health port)", f"{max(p.live_p99_ms for p in storms):.1f} ms",
         max(p.live_p99_ms for p in storms) <= 100),
        ("peak memory ≤ idle + 512 MiB", f"{peak:.0f} MiB (idle {out['idle_mib']:.0f})", peak <= out["idle_mib"] + 512),
        ("refusals p99 ≤ 20 ms as clients see them, in the storms", f"{refused:.0f} ms", refused <= 20),
        ("storms: every client gets an answer (no reset, no broken pipe)",
         "; ".join(f"{n}: {sum(v['errors'].values())} errors" for n, v in out["storm_transport_errors"].items()),
         all(not v["errors"] for v in out["storm_transport_errors"].values())),
        ("storm goodput with the lingering close ≥ 90% of without it (same run)",
         f"{patient.goodput_rps:,.1f} vs {unlingering.goodput_rps:,.1f} 2xx/s = {kept:.2f}x", kept >= 0.9),
        ("only 2xx / 4xx / 503 answers", ", ".join(map(str, sorted(codes))),
         all(c < 500 or c == 503 for c in codes)),
        ("normal traffic with slow clients ≥ 90%", f"{out['slow_ratio']:.0%}", out["slow_ratio"] >= 0.9),
        ("worker replaced, server never exited", f"replaced {out['kill_replaced']}",
         out["kill_replaced"] and not (out["exited"] or out["kill_exited"] or out["soak_exited"])),
        ("soak: memory growth ≤ 5%, 0 errors", f"{out['soak_growth']:+.1%}, {phases[-1].statuses}",
         out["soak_growth"] <= 0.05 and set(phases[-1].statuses) <= {200}),
    ]  # fmt: skip


def table(phases: list[Phase], checks: list[tuple[str, str, bool]]) -> str:
    lines = ["| phase | goodput (2xx/s) | p99 of 2xx | p99 of 503 | statuses | liveness p99: health port / main port "
             "| peak memory | note |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in phases:
        p99 = f"{p.p99_ms:.0f} ms" if p.p99_ms is not None else "–"
        refused = f"{p.refused_p99_ms:.0f} ms" if p.refused_p99_ms is not None else "–"
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(p.statuses.items()))
        live = f"{p.live_p99_ms:.1f} / {p.live_main_p99_ms:.1f} ms"
        lines.append(f"| {p.name} | {p.goodput_rps:,.1f} | {p99} | {refused} | {statuses} | {live} "
                     f"| "
                     f"{p.peak_mib:.0f} MiB | {p.note} |")  # fmt: skip
    lines += ["", "| bar | measured | verdict |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'met' if ok else 'MISSED'} |" for name, value, ok in checks]
    return "\n".join(lines)


def main() -> int:
    soak_seconds = float(os.environ.get("STRESS_SOAK_SECONDS", "120"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    repository = model.CACHE / "models"
    model.ensure_model(repository)
    bodies = {
        "storm": storm_body(),
        "one": model.json_body(model.digits_rows(1)),
        "hundred": model.json_body(model.digits_rows(100)),
    }
    out: dict = {}
    started = time.monotonic()
    print(f"stress: storm body {len(bodies['storm']) / 1e6:.1f} MB; about {3 + soak_seconds / 60:.0f} minutes",
          flush=True)  # fmt: skip
    phases = overload_phases(repository, bodies, out)
    phases.append(unlingering_phase(repository, bodies, out))
    phases.append(kill_phase(repository, bodies, out))
    phases.append(soak_phase(repository, bodies, out, soak_seconds))
    checks = verdicts(phases, out)
    report = table(phases, checks)
    print(report)
    print(f"stress: {time.monotonic() - started:.0f} s")
    (RESULTS / "stress.md").write_text(report + "\n")
    (RESULTS / "stress.json").write_text(json.dumps({"phases": [asdict(p) for p in phases], **out,
                                                    "verdicts": checks}, indent=2, default=str))  # fmt: skip
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
