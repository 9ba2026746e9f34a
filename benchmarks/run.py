"""`python -m benchmarks.run [--duration S] [--servers a,b] [--repository R]`: the whole benchmark, bounded in time.

The servers run one after another on 127.0.0.1 (never together: they would share the same 2 cores), each
started as a subprocess, checked with one real request per scenario (right status, right probabilities), driven
by `hey`, then stopped with its whole process group, also on Ctrl-C. Then c=1 once more, FastAPI + ORT and
tabserve up together in alternating turns (`bench_alternating`). One table and the bars of issues 3 and 11 at the
end, and `benchmarks/results/latest.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks import costs, grpc_load, model, report
from benchmarks.loadgen import Load, Stats, drive, drive_one_connection, hey_available
from benchmarks.procs import (
    NotAvailable,
    cpu_seconds_between,
    free_port,
    http_status,
    idle_cpu_percent,
    running,
    tree_cpu_ticks,
)
from benchmarks.report import (
    BINARY_1000,
    C1,
    C1_ALTERNATING,
    C16,
    C64,
    EXPLAIN_C16,
    GRPC_1000,
    IN_PROCESS_1000,
    JSON_1000,
    Row,
)
from benchmarks.servers import load_classes

DEFAULT_DURATION = float(os.environ.get("BENCH_DURATION", "8"))
HTTP_PROCESSES = tuple(n for n in (1, 2, 4, 8) if n <= (os.cpu_count() or 1))
"""tabserve's HTTP process counts measured at c=64, up to the machine's cores: does a second one pay?"""
SWEEP = tuple(f"{report.TABSERVE}-h{n}" for n in HTTP_PROCESSES)
MAIN = ("bare", report.BASELINE, report.STRICT, "litserve", report.TABSERVE)
SERVERS = (*MAIN, *SWEEP)
STARTUP_TIMEOUT = 90.0  # LitServe and tabserve start worker processes and load models
IDLE_SECONDS = 2.0
IN_PROCESS_SECONDS = 2.0
ALTERNATING_TURNS = 8
"""Turns per server in the alternating c=1 measurement, each a quarter of a scenario's duration."""
ALTERNATING = (report.BASELINE, report.TABSERVE)
OVERHEAD_PER_SERVER = 10.0  # start, settle, idle CPU, stop: what a server costs besides its scenarios (estimate)
RESULTS = model.ROOT / "benchmarks" / "results" / "latest.json"


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    concurrency: int
    binary: bool = False
    servers: tuple[str, ...] = SERVERS
    grpc: bool = False  # the Open Inference Protocol over gRPC (tabserve only), driven by benchmarks/grpc_load.py
    timed_here: bool = False  # one connection timed by the harness in µs (loadgen.drive_one_connection), not hey
    explain: bool = False  # tabserve's explain route (integrated gradients), the same body as predict


SCENARIOS = (
    Scenario(C1, 1, 1, servers=MAIN, timed_here=True),
    Scenario(C16, 1, 16, servers=MAIN),
    Scenario(C64, 1, 64),
    Scenario(JSON_1000, 1000, 4, servers=MAIN),
    Scenario(BINARY_1000, 1000, 4, binary=True, servers=(report.TABSERVE,)),
    Scenario(GRPC_1000, 1000, 4, servers=(report.TABSERVE,), grpc=True),
    Scenario(EXPLAIN_C16, 1, 16, servers=(report.TABSERVE,), explain=True),
)


@dataclass(frozen=True)
class Server:
    name: str
    ready: str
    predict: str
    infer: str | None = None  # the Open Inference Protocol endpoint, for binary tensors
    explain: str | None = None


SPECS = {
    "bare": Server("bare", "/health", "/predict"),
    "fastapi": Server("fastapi", "/health", "/predict"),
    "fastapi-strict": Server("fastapi-strict", "/health", "/predict"),
    "litserve": Server("litserve", "/health", "/predict"),
    **{
        name: Server(
            name,
            "/v2/health/ready",
            f"/v1/models/{model.MODEL_NAME}/predict",
            f"/v2/models/{model.MODEL_NAME}/infer",
            f"/v1/models/{model.MODEL_NAME}:explain",
        )
        for name in (report.TABSERVE, *SWEEP)
    },
}


class Clock:
    """Progress lines stamped with the time since the run began."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


def server_command(name: str, port: int, model_dir: Path, repository: Path, grpc_port: int) -> list[str]:
    """How each server starts; tabserve as a user starts it (`-hN`: with N HTTP processes), after checking
    `python -m service` exists."""
    if not name.startswith(report.TABSERVE):
        module = {"bare": "bare", "litserve": "litserve_vanilla"}.get(name, "fastapi_ort")
        flags = ["--probabilities-only"] if name == report.STRICT else []
        return [sys.executable, "-m", f"benchmarks.servers.{module}", "--model", str(model_dir), "--port", str(port),
                *flags]  # fmt: skip
    try:
        help_run = subprocess.run(
            [sys.executable, "-m", "service", "--help"], cwd=model.ROOT, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise NotAvailable("`python -m service --help` did not answer in 60 s") from None
    if help_run.returncode != 0:
        last = (help_run.stderr or help_run.stdout).strip().splitlines()[-1:] or ["no output"]
        raise NotAvailable(f"`python -m service --help` failed: {last[0]}")
    command = [sys.executable, "-m", "service", "--repository", str(repository), "--port", str(port)]
    command += ["--host", "127.0.0.1"]
    if "--workers" in help_run.stdout:
        command += ["--workers", "1"]  # one inference process, like the other servers
    if "--grpc-port" in help_run.stdout:
        command += ["--grpc-port", str(grpc_port)]
    if name != report.TABSERVE:
        command += ["--http-processes", name.rsplit("-h", 1)[1]]
    return command


def make_load(spec: Server, base: str, scenario: Scenario) -> Load:
    rows = model.digits_rows(scenario.rows)
    if not scenario.binary:
        path = spec.explain if scenario.explain else spec.predict
        return Load(base + path, model.json_body(rows), scenario.rows, scenario.concurrency)
    body, header_length = model.binary_body(rows)
    headers = (f"Inference-Header-Content-Length: {header_length}",)
    return Load(base + spec.infer, body, scenario.rows, scenario.concurrency, "application/octet-stream", headers)


def preflight(load: Load, expected: np.ndarray | None, classes: list[str]) -> str | None:
    """One request before the load: None when the server answers 2xx with the right probabilities, else why not.

    A fast wrong answer is not a result, so a scenario whose check fails is reported and skipped.
    """
    headers = load.header_dict()
    request = urllib.request.Request(load.url, data=load.body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body, header_length = response.read(), response.headers.get("Inference-Header-Content-Length")
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read()[:200].decode(errors='replace')}"
    except OSError as e:
        return f"no answer: {e}"
    if expected is None:
        return None
    try:
        if header_length is not None:
            got = model.parse_binary_response(body, int(header_length))
        elif load.content_type == "application/json" and "explanations" in (answer := json.loads(body)):
            if [e["label"] for e in answer["explanations"]] != [classes[i] for i in expected.argmax(axis=1)]:
                return "explained a class other than the predicted one"
            got = np.array([e["probability"] for e in answer["explanations"]], np.float32)  # the predicted class's
            expected = expected.max(axis=1)
        elif load.content_type == "application/json" and "predictions" in answer:
            got = np.array([[p["probabilities"][c] for c in classes] for p in answer["predictions"]], np.float32)
        elif load.content_type == "application/json":  # the strict baseline: the bare matrix
            got = np.asarray(answer["probabilities"], dtype=np.float32)
        else:  # an Open Inference Protocol answer in JSON
            (output,) = [o for o in json.loads(body)["outputs"] if o["name"] == "probabilities"]
            got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    except (ValueError, KeyError, TypeError) as e:
        return f"unexpected answer ({type(e).__name__}: {e}): {body[:200].decode(errors='replace')}"
    if got.shape != expected.shape:
        return f"wrong shape: {got.shape}, expected {expected.shape}"
    if (diff := float(np.abs(got - expected).max())) > 1e-5:
        return f"wrong probabilities: max difference {diff:.2g} from in-process ONNX Runtime"
    return None


def preflight_grpc(address: str, rows: np.ndarray, expected: np.ndarray) -> str | None:
    """`preflight` for the gRPC scenario: None when one call answers the right probabilities, else why not."""
    try:
        got = grpc_load.probabilities(address, model.MODEL_NAME, rows)
    except Exception as e:  # the client raises InferenceServerException, and others for a dead channel
        return f"no answer: {type(e).__name__}: {e}"
    if got is None or got.shape != expected.shape:
        return f"wrong shape: {None if got is None else got.shape}, expected {expected.shape}"
    if (diff := float(np.abs(got - expected).max())) > 1e-5:
        return f"wrong probabilities: max difference {diff:.2g} from in-process ONNX Runtime"
    return None


def expected_probabilities(model_dir: Path, rows: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: model.digits_rows(rows)})[0]


def bench_server(name: str, scenarios: list[Scenario], ctx: dict, log: Clock) -> tuple[list[Row], dict]:
    """Start one server, measure its idle CPU and every scenario, stop it. Never raises for a server's failure."""
    spec, rows, info = SPECS[name], [], {"available": False}
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        ctx["grpc_address"] = f"127.0.0.1:{(grpc_port := free_port())}"
        command = server_command(name, port, ctx["model_dir"], ctx["repository"], grpc_port)
        info["command"] = " ".join(command)
        log(f"{name}: starting (log: {ctx['logs'] / (name + '.log')})")
        started = time.monotonic()
        with running(command, base + spec.ready, ctx["logs"] / f"{name}.log", STARTUP_TIMEOUT, model.ROOT) as process:
            info["available"], info["startup_s"] = True, round(time.monotonic() - started, 1)
            log(f"{name}: ready after {info['startup_s']} s; measuring idle CPU for {IDLE_SECONDS:g} s …")
            time.sleep(1.0)  # let start-up work settle before calling the server idle
            idle = idle_cpu_percent(process.pid, IDLE_SECONDS)
            info["idle_cpu_percent"] = round(idle, 1)
            log(f"{name}: idle CPU {idle:.1f}% of a core")
            for scenario in scenarios:
                try:
                    rows.append(run_scenario(name, spec, base, scenario, process, idle, ctx, log))
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # hey failed: note it, go on
                    log(f"{name}: {scenario.name}: failed ({e})")
                    rows.append(Row(name, scenario.name, idle_cpu=idle, note=f"failed: {e}"))
    except NotAvailable as e:
        info["reason"] = str(e)
        log(f"{name}: not available ({e})")
        rows.append(Row(name, "", note=f"not available ({e})"))
    except Exception as e:  # a broken server or harness step must not lose the other servers' results
        info["reason"] = f"{type(e).__name__}: {e}"
        log(f"{name}: failed ({info['reason']})")
        rows.append(Row(name, "", note=f"failed ({info['reason']})"))
    if info["available"]:
        log(f"{name}: stopped")
    return rows, info


def bench_alternating(ctx: dict, log: Clock) -> list[Row]:
    """c=1 with FastAPI + ORT and tabserve up together, in alternating turns of one keep-alive connection.

    A one-row request's p50 on this shared VM moves by half from one minute to the next (docs/performance.md),
    and the main run measures each server in its own minutes: its c=1 ratio says partly which minutes each server
    drew. Here each turn of one server is next to a turn of the other (the idle one costs about 1 % of a core), and
    a server's p50 is the median of its turns', so a slow minute lands on both. The c=1 bar reads these rows."""
    turn, scenario = ctx["duration"] / 4, next(s for s in SCENARIOS if s.name == C1)
    try:
        with contextlib.ExitStack() as stack:
            loads = {}
            for name in ALTERNATING:
                spec, port = SPECS[name], free_port()
                base = f"http://127.0.0.1:{port}"
                command = server_command(name, port, ctx["model_dir"], ctx["repository"], free_port())
                log_file = ctx["logs"] / f"{name}-alternating.log"
                stack.enter_context(running(command, base + spec.ready, log_file, STARTUP_TIMEOUT, model.ROOT))
                loads[name] = make_load(spec, base, scenario)
                if problem := preflight(loads[name], ctx["expected"][1], ctx["classes"]):
                    raise RuntimeError(f"{name}: check request failed: {problem}")
            time.sleep(1.0)  # let start-up work settle
            log(f"c=1 alternating: {ALTERNATING_TURNS} turns of {turn:g} s each for {' and '.join(ALTERNATING)} …")
            turns = {name: [] for name in ALTERNATING}
            for _ in range(ALTERNATING_TURNS):
                for name, load in loads.items():
                    turns[name].append(drive_one_connection(load, turn))
    except (NotAvailable, OSError, RuntimeError, subprocess.SubprocessError) as e:
        log(f"c=1 alternating: failed ({e})")
        return [Row(name, C1_ALTERNATING, note=f"failed: {e}") for name in ALTERNATING]
    rows = [_median_turn(name, stats) for name, stats in turns.items()]
    for row in rows:
        log(f"{row.server}: {C1_ALTERNATING}: p50 {report.num(row.p50_ms, 3)} ms (median of {ALTERNATING_TURNS} turns)")
    return rows


def _median_turn(name: str, turns: list[Stats]) -> Row:
    def median(key: str) -> float | None:
        values = [v for t in turns if (v := getattr(t, key)) is not None]
        return statistics.median(values) if values else None

    errors = sum(t.errors for t in turns)
    return Row(name, C1_ALTERNATING, median("rps"), median("p50_ms"), median("p99_ms"), median("rows_per_second"),
               errors)  # fmt: skip


def run_scenario(name, spec, base, scenario, process, idle, ctx, log) -> Row:
    expected = None if name == "bare" else ctx["expected"][scenario.rows]
    if scenario.grpc:
        problem = preflight_grpc(ctx["grpc_address"], model.digits_rows(scenario.rows), expected)
    else:
        load = make_load(spec, base, scenario)
        problem = preflight(load, expected, ctx["classes"])
    if problem:
        log(f"{name}: {scenario.name}: skipped, check request failed: {problem}")
        return Row(name, scenario.name, idle_cpu=idle, note=f"skipped: {problem}")
    log(f"{name}: {scenario.name} for {ctx['duration']:g} s …")
    cpu_before = tree_cpu_ticks(process.pid)
    if scenario.grpc:
        rows = model.digits_rows(scenario.rows)
        stats = grpc_load.drive(ctx["grpc_address"], model.MODEL_NAME, rows, scenario.concurrency, ctx["duration"])
    else:
        stats = (drive_one_connection if scenario.timed_here else drive)(load, ctx["duration"])
    cpu = cpu_seconds_between(cpu_before, tree_cpu_ticks(process.pid))
    note = ""
    if process.poll() is not None or http_status(base + spec.ready) != 200:
        note = "server died or stopped being ready"
    cpu_ms = 1000 * cpu / stats.requests if stats.requests else None
    row = Row(
        name, scenario.name, stats.rps, stats.p50_ms, stats.p99_ms, stats.rows_per_second, stats.errors, idle, note,
        cpu_ms,
    )  # fmt: skip
    p50, p99 = report.num(stats.p50_ms, 2), report.num(stats.p99_ms, 2)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(stats.statuses.items()))
    cpu_text = report.num(cpu_ms, 2)
    log(f"{name}: {scenario.name}: {stats.rps:,.0f} rps, p50 {p50} ms, p99 {p99} ms, {cpu_text} ms CPU per request, "
        f"statuses {{{statuses}}} {note}")  # fmt: skip
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION, help="seconds per scenario (env BENCH_DURATION; 8)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}")
    parser.add_argument("--repository", type=Path, default=model.CACHE / "models", help="model repository to use")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := [s for s in args.servers if s not in SERVERS]:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM unwind through every `finally`, which stops the servers and hey. A shell that starts
    # us in the background ignores SIGINT; restore it so Ctrl-C (or `kill -INT`) still works.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if not hey_available():
        print("hey (the load generator) is not installed: apt-get install -y hey", file=sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: every server started has been stopped", file=sys.stderr)
        return 130


def context(repository: Path, duration: float) -> dict:
    """What every measurement needs: the model (trained into `repository` if absent), its expected answers."""
    repository = repository.resolve()
    model_dir = model.ensure_model(repository)
    return {
        "model_dir": model_dir,
        "repository": repository,
        "duration": duration,
        "logs": model.CACHE / "logs",
        "classes": load_classes(model_dir),
        "expected": {n: expected_probabilities(model_dir, n) for n in {1, 1000}},
    }


def run(args: argparse.Namespace) -> int:
    log = Clock()
    repository = args.repository.resolve()
    model_dir = model.ensure_model(repository)
    plan = {s: [sc for sc in SCENARIOS if s in sc.servers] for s in args.servers}
    n_scenarios = sum(len(v) for v in plan.values())
    alternating = all(name in plan for name in ALTERNATING)
    expected_s = n_scenarios * args.duration + IN_PROCESS_SECONDS + OVERHEAD_PER_SERVER * len(plan)
    expected_s += alternating * (2 * ALTERNATING_TURNS * args.duration / 4 + 2 * OVERHEAD_PER_SERVER)
    if report.TABSERVE in plan:
        per_cost = (len(c.scenarios) * costs.ROUNDS * args.duration + 2 * OVERHEAD_PER_SERVER for c in costs.COSTS)
        expected_s += sum(per_cost)
    worst_s = expected_s + (len(plan) + 2 * alternating) * STARTUP_TIMEOUT + n_scenarios * 60
    log(
        f"model {model_dir}; {len(plan)} servers, {n_scenarios} scenarios of {args.duration:g} s: "
        f"expect about {expected_s:.0f} s (at most {worst_s:.0f} s)"
    )
    ctx = context(repository, args.duration)

    log(f"onnxruntime: {IN_PROCESS_1000}, one thread, {IN_PROCESS_SECONDS:g} s …")
    ort_rows = model.in_process_rows_per_second(model_dir, 1000, IN_PROCESS_SECONDS)
    log(f"onnxruntime: {ort_rows:,.0f} rows/s")
    rows = [Row(report.INPROCESS, IN_PROCESS_1000, rows_per_s=ort_rows)]
    servers = {}
    for name, scenarios in plan.items():
        server_rows, servers[name] = bench_server(name, scenarios, ctx, log)
        rows.extend(server_rows)
    if alternating:
        rows.extend(bench_alternating(ctx, log))
    cost_rows, cost_bars = costs.run_all(ctx, log) if report.TABSERVE in plan else ([], [])
    rows.append(rows.pop(0))  # the in-process ceiling last, under the servers
    rows.extend(cost_rows)

    bars = report.bars(rows) + cost_bars
    print()
    print(report.table(rows))
    print(report.LEGEND)
    for bar in bars:
        print(f"{bar.verdict:<4}  {bar.name}: {bar.detail}")
    write_results(args, model_dir, rows, servers, bars, log)
    return 0


def write_results(args, model_dir, rows, servers, bars, log: Clock) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "duration_per_scenario_s": args.duration,
        "wall_s": round(time.monotonic() - log.start, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": str(model_dir),
        "baseline": report.BASELINE,
        "servers": servers,
        "rows": [asdict(r) | {"ratios": report.ratios(r, rows)} for r in rows],
        "bars": [asdict(b) for b in bars],
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.output}  (total {results['wall_s']} s)")


if __name__ == "__main__":
    sys.exit(main())
