"""Cost bars: what one of tabserve's features costs, measured against tabserve without it, in the same run.

For each feature both servers are up together (an idle one costs about 1 % of a core), and turns of each scenario
alternate between them, `ROUNDS` times; a server's figure is the median of its turns, so a slow minute of this
shared machine lands on both. The bar is the ratio with ÷ without. `make bench` runs them after the main table;
`python -m benchmarks.costs [--duration S] [--only NAME …]` runs them alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks import model, report
from benchmarks.loadgen import Stats, drive, drive_one_connection
from benchmarks.procs import NotAvailable, cpu_seconds_between, free_port, running, tree_cpu_ticks
from benchmarks.report import C1, C16, JSON_1000, Bar, Row
from bundle import policy

ROUNDS = 3
"""Turns per server and scenario, each half a scenario's duration."""


@dataclass(frozen=True)
class Cost:
    name: str
    on: tuple[str, ...]  # tabserve's flags with the feature
    off: tuple[str, ...]  # and without it
    scenarios: tuple[str, ...]
    bar: float  # with ÷ without: rps at least this (throughput), or p50 at most this (latency, at c=1)
    repository: Callable[[dict], Path] | None = None  # another repository than the main run's, for both servers
    turn_on: Callable[[str, Path], None] | None = None  # what starts the feature on the "on" server, once up
    env_on: Callable[[dict], dict[str, str]] | None = None  # environment of the "on" server (the context given)


class Discarding(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint on 127.0.0.1 that takes every export and throws it away (a Collector's cheapest
    part: what tracing costs the server is the bar, not what a backend does with the spans)."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


def tracing_env(sampler: str) -> Callable[[dict], dict[str, str]]:
    def env(ctx: dict) -> dict[str, str]:
        if "otlp" not in ctx:
            ctx["otlp"] = Discarding()
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": ctx["otlp"].endpoint, "OTEL_TRACES_SAMPLER": sampler}

    return env


def shadow_repository(ctx: dict) -> Path:
    """The benchmark's model, and a second digits version beside it (trained once) as the shadow challenger; the
    benchmark's own version pinned, so both servers answer with it."""
    root, champion = model.CACHE / "shadow" / "models", ctx["model_dir"]
    folder = root / model.MODEL_NAME
    if not (folder / champion.name).is_dir():
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(champion, folder / champion.name)
        for name in ("config.pbtxt", "labels.txt"):  # the model's Triton files, beside its versions
            shutil.copy(champion.parent / name, folder / name)
        subprocess.run([sys.executable, "-m", "training", "train", "--dataset", model.MODEL_NAME, "--name",
                        model.MODEL_NAME, "--repository", str(root), "--quiet", "--workdir",
                        str(model.CACHE / "runs" / "shadow")], cwd=model.ROOT, check=True)  # fmt: skip
    policy.write(folder, policy.VersionPolicy(pinned=int(champion.name)))
    return root


def start_shadow(base: str, root: Path) -> None:
    challenger = max(int(p.name) for p in (root / model.MODEL_NAME).iterdir() if p.name.isdigit())
    body = json.dumps({"challenger": challenger, "mode": "shadow", "percent": 100, "auto": False}).encode()
    request = urllib.request.Request(f"{base}/v1/models/{model.MODEL_NAME}/rollout", body,
                                     {"content-type": "application/json"}, method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response)["state"] == "running"


COSTS = (
    Cost("prediction log (SQLite)", (), ("--prediction-log", "off"), (C16, JSON_1000), 0.85),
    Cost("shadow at 100 %", (), (), (C1,), 1.1, shadow_repository, start_shadow),
    Cost("tracing configured, sampler always_off", (), (), (C16,), 0.95, env_on=tracing_env("always_off")),
    Cost("tracing, every request exported", (), (), (C16,), 0.75, env_on=tracing_env("always_on")),
    Cost("JSON access log", ("--access-log", "json"), (), (C16,), 0.9),
)  # fmt: skip
SCENARIO_SHAPES = {C1: (1, 1), C16: (1, 16), JSON_1000: (1000, 4)}


def measure(cost: Cost, ctx: dict, log) -> tuple[list[Row], list[Bar]]:
    """Both variants up together, turns alternating; rows named `tabserve [name: on|off]`, one bar per scenario."""
    from benchmarks.run import SPECS, Scenario, make_load, preflight, server_command  # the main harness's

    spec, turn = SPECS[report.TABSERVE], ctx["duration"] / 2
    names = {"on": f"{report.TABSERVE} [{cost.name}: on]", "off": f"{report.TABSERVE} [{cost.name}: off]"}
    turns: dict[tuple[str, str], list[Stats]] = {}
    cpu: dict[tuple[str, str], float] = {}
    try:
        with contextlib.ExitStack() as stack:
            servers = {}
            repository = cost.repository(ctx) if cost.repository else ctx["repository"]
            for variant, flags in (("on", cost.on), ("off", cost.off)):
                port, state = free_port(), stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-state-"))
                command = server_command(report.TABSERVE, port, ctx["model_dir"], repository, free_port())
                command += ["--state-dir", state, *flags]
                log_file = ctx["logs"] / f"cost-{variant}.log"
                env = cost.env_on(ctx) if cost.env_on is not None and variant == "on" else None
                process = stack.enter_context(running(command, f"http://127.0.0.1:{port}{spec.ready}", log_file, 90,
                                                      model.ROOT, env))  # fmt: skip
                servers[variant] = (process, f"http://127.0.0.1:{port}")
            if cost.turn_on is not None:
                cost.turn_on(servers["on"][1], repository)
            time.sleep(1.5)  # every HTTP process reads a rollout within a second
            for scenario in cost.scenarios:
                rows, concurrency = SCENARIO_SHAPES[scenario]
                loads = {}
                for variant, (_, base) in servers.items():
                    loads[variant] = make_load(spec, base, Scenario(scenario, rows, concurrency))
                    if problem := preflight(loads[variant], ctx["expected"][rows], ctx["classes"]):
                        raise RuntimeError(f"{names[variant]}: check request failed: {problem}")
                log(f"cost of {cost.name}: {scenario}, {ROUNDS} turns of {turn:g} s each, on and off alternating …")
                for _ in range(ROUNDS):
                    for variant, load in loads.items():
                        process = servers[variant][0]
                        before = tree_cpu_ticks(process.pid)
                        stats = (drive_one_connection if concurrency == 1 else drive)(load, turn)
                        turns.setdefault((variant, scenario), []).append(stats)
                        spent = cpu_seconds_between(before, tree_cpu_ticks(process.pid))
                        cpu[variant, scenario] = cpu.get((variant, scenario), 0.0) + spent
    except (NotAvailable, OSError, RuntimeError, subprocess.SubprocessError, AssertionError) as e:
        log(f"cost of {cost.name}: failed ({e})")
        return [Row(names["on"], "", note=f"failed: {e}")], [Bar(f"{cost.name}: cost", "N/A", str(e))]
    return _rows_and_bars(cost, names, turns, cpu, log)


def _rows_and_bars(cost: Cost, names: dict, turns: dict, cpu: dict, log) -> tuple[list[Row], list[Bar]]:
    rows, bars = [], []
    for scenario in cost.scenarios:
        figures = {}
        for variant in ("on", "off"):
            stats = turns[variant, scenario]
            answered = sum(s.requests for s in stats)
            row = Row(
                names[variant], scenario, statistics.median(s.rps for s in stats),
                statistics.median(s.p50_ms or 0 for s in stats), statistics.median(s.p99_ms or 0 for s in stats),
                statistics.median(s.rows_per_second for s in stats), sum(s.errors for s in stats),
                cpu_ms=1000 * cpu[variant, scenario] / answered if answered else None,
            )  # fmt: skip
            rows.append(row)
            figures[variant] = row
        on, off = figures["on"], figures["off"]
        latency = scenario == C1
        ratio = (on.p50_ms / off.p50_ms) if latency else (on.rps / off.rps if off.rps else 0.0)
        ok = ratio <= cost.bar if latency else ratio >= cost.bar
        what = "p50" if latency else "rps"
        detail = (f"{what} {getattr(on, 'p50_ms' if latency else 'rps'):,.2f} on vs "
                  f"{getattr(off, 'p50_ms' if latency else 'rps'):,.2f} off = {ratio:.3f}x "
                  f"(needs {'<=' if latency else '>='} {cost.bar:g}x); CPU per request {report.num(on.cpu_ms, 3)} vs "
                  f"{report.num(off.cpu_ms, 3)} ms")  # fmt: skip
        errors = (on.errors or 0) + (off.errors or 0)
        verdict = "FAIL" if errors else ("PASS" if ok else "FAIL")
        bars.append(
            Bar(f"{cost.name}: {scenario} {what} on / off", verdict, detail + (f"; {errors} errors" if errors else ""))
        )
        log(f"cost of {cost.name}: {scenario}: {detail}")
    return rows, bars


def run_all(ctx: dict, log, only: list[str] | None = None) -> tuple[list[Row], list[Bar]]:
    rows, bars = [], []
    for cost in COSTS:
        if not only or cost.name in only:
            r, b = measure(cost, ctx, log)
            rows += r
            bars += b
    return rows, bars


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import Clock, context

    parser = argparse.ArgumentParser(prog="python -m benchmarks.costs", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per scenario and server (8)")
    parser.add_argument("--only", choices=[c.name for c in COSTS], action="append", help="a feature's cost (repeat)")
    args = parser.parse_args(argv)
    log = Clock()
    rows, bars = run_all(context(model.CACHE / "models", args.duration), log, args.only)
    print()
    print(report.table(rows))
    for bar in bars:
        print(f"{bar.verdict:<4}  {bar.name}: {bar.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
