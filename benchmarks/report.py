"""The table and the performance bars (issues 3 and 11), as ratios to the hand-written FastAPI server of the same run.

Ratios, not absolute numbers, are what a run on a shared 2-core machine can vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass

BASELINE = "fastapi"
STRICT = "fastapi-strict"  # the same server answering only the probability matrix: the stricter baseline
TABSERVE = "tabserve"
INPROCESS = "onnxruntime"  # the row of in-process ONNX Runtime (no HTTP)
C1, C16, C64 = "json 1 row c=1", "json 1 row c=16", "json 1 row c=64"
C1_ALTERNATING = "json 1 row c=1, alternating"  # FastAPI and tabserve up together, turns alternating (run.py)
EXPLAIN_C16 = "json 1 row explain c=16"
JSON_1000, BINARY_1000, IN_PROCESS_1000 = "json 1000 rows c=4", "binary 1000 rows c=4", "in-process batch 1000"
GRPC_1000 = "grpc 1000 rows c=4"  # tritonclient.grpc.aio (Python, in the harness) instead of hey
# The scenario whose baseline row a scenario is compared with (binary tensors, gRPC, in-process ORT: 1000-row JSON).
COMPARED_WITH = {BINARY_1000: JSON_1000, GRPC_1000: JSON_1000, IN_PROCESS_1000: JSON_1000}
LEGEND = f"""
×: ratio to {BASELINE} on the same scenario ({BINARY_1000}, {GRPC_1000} and {IN_PROCESS_1000}: to its {JSON_1000}).
errors: answers other than 2xx ("!" marks a flawed measurement). idle cpu %: the server's process tree while idle,
in percent of one core (a busy-polling loop shows ~100). p50/p99 from hey's per-request CSV (0.1 ms resolution),
except at c=1: one keep-alive connection timed by the harness (µs). "c=1, alternating": {BASELINE} and {TABSERVE}
up together, short turns alternating between them; p50 and p99 are the medians of the turns' (the c=1 bar's row).
"""


@dataclass
class Row:
    """One line of the table: a measured scenario, or a note (server not available, scenario skipped)."""

    server: str
    scenario: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rows_per_s: float | None = None
    errors: int | None = None
    idle_cpu: float | None = None
    note: str = ""
    cpu_ms: float | None = None
    """The server's CPU (every process of it, user + system) per answered request: steadier than rps on a noisy
    machine, and it says what a request costs rather than how the cores were shared with the load generator."""

    @property
    def measured(self) -> bool:
        return self.rps is not None or self.rows_per_s is not None


def ratios(row: Row, rows: list[Row]) -> dict[str, float | None]:
    """rps, p50, p99 and rows/s of `row` divided by the baseline's on the same (or compared) scenario."""
    scenario = COMPARED_WITH.get(row.scenario, row.scenario)
    base = next((r for r in rows if r.server == BASELINE and r.scenario == scenario and r.measured), None)
    out: dict[str, float | None] = {}
    for key in ("rps", "p50_ms", "p99_ms", "rows_per_s"):
        mine, theirs = getattr(row, key), getattr(base, key, None) if base else None
        out[key] = mine / theirs if mine is not None and theirs else None
    return out


def num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(rows: list[Row]) -> str:
    header = ["server", "scenario", "rps", "p50 ms", "p99 ms", "rows/s", "errors", "cpu ms/req", "idle cpu %"]
    header += ["rps ×", "p50 ×", "p99 ×", "rows/s ×"]
    lines = []
    for row in rows:
        if not row.measured:  # a note spans the numeric columns; the JSON results keep it whole
            note = ": ".join(t for t in (row.scenario, row.note) if t)
            lines.append([row.server, note if len(note) <= 200 else note[:199] + "…"])
            continue
        r = ratios(row, rows)
        errors = "-" if row.errors is None else (f"{row.errors} !" if row.errors else "0")
        cells = [row.server, row.scenario + (f" ({row.note})" if row.note else "")]
        cells += [num(row.rps), num(row.p50_ms, 2), num(row.p99_ms, 2), num(row.rows_per_s), errors, num(row.cpu_ms, 2)]
        cells += [num(row.idle_cpu, 1)] + [_ratio(r[k]) for k in ("rps", "p50_ms", "p99_ms", "rows_per_s")]
        lines.append(cells)
    widths = [max(len(header[i]), *(len(c[i]) for c in lines if len(c) > 2)) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        if len(cells) == 2:
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        text = [f"{c:<{widths[i]}}" if i < 2 else f"{c:>{widths[i]}}" for i, c in enumerate(cells)]
        return "  ".join(text)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(c) for c in lines)])


@dataclass
class Bar:
    name: str
    verdict: str  # PASS, FAIL or N/A
    detail: str


# (name, server, its scenario, measure, reference server, its scenario, comparison, factor). "info": a ratio
# reported without a bar (the stricter baseline's).
BARS = [
    ("c=1 single-row p50 <= fastapi (alternating turns)", TABSERVE, C1_ALTERNATING, "p50_ms", BASELINE,
     C1_ALTERNATING, "<=", 1),
    ("c=16 single-row rps >= 2.5x fastapi", TABSERVE, C16, "rps", BASELINE, C16, ">=", 2.5),
    ("c=64 single-row p99 <= 0.5x fastapi", TABSERVE, C64, "p99_ms", BASELINE, C64, "<=", 0.5),
    ("1000-row JSON rows/s >= 25x fastapi", TABSERVE, JSON_1000, "rows_per_s", BASELINE, JSON_1000, ">=", 25),
    ("1000-row JSON rows/s >= 30% of the bare endpoint", TABSERVE, JSON_1000, "rows_per_s", "bare", JSON_1000, ">=",
     0.3),
    ("binary rows/s >= 70% of in-process ORT", TABSERVE, BINARY_1000, "rows_per_s", INPROCESS, IN_PROCESS_1000, ">=",
     0.7),
    ("explain 1 row c=16 rps >= 50% of predict's", TABSERVE, EXPLAIN_C16, "rps", TABSERVE, C16, ">=", 0.5),
    ("c=64 rps with 4 HTTP processes >= 3x with 1 (>= 8 cores)", f"{TABSERVE}-h4", C64, "rps", f"{TABSERVE}-h1", C64,
     ">=", 3),
    ("c=1 p50 vs fastapi, each measured in its own minutes", TABSERVE, C1, "p50_ms", BASELINE, C1, "info", 0),
    ("c=1 p50 vs the strict baseline", TABSERVE, C1, "p50_ms", STRICT, C1, "info", 0),
    ("c=16 rps vs the strict baseline", TABSERVE, C16, "rps", STRICT, C16, "info", 0),
    ("1000-row JSON rows/s vs the strict baseline", TABSERVE, JSON_1000, "rows_per_s", STRICT, JSON_1000, "info", 0),
    ("c=64 rps with 2 HTTP processes vs 1", f"{TABSERVE}-h2", C64, "rps", f"{TABSERVE}-h1", C64, "info", 0),
]  # fmt: skip


def bars(rows: list[Row]) -> list[Bar]:
    """Each bar PASS, FAIL (also when its scenario had errors) or N/A (not measured); ratios without a bar INFO."""

    def find(who: str, scenario: str) -> Row | None:
        return next((r for r in rows if r.server == who and r.scenario == scenario and r.measured), None)

    result = []
    for name, server, scenario, key, ref_server, ref_scenario, op, factor in BARS:
        mine, ref = find(server, scenario), find(ref_server, ref_scenario)
        if mine is None or ref is None or getattr(mine, key) is None or not getattr(ref, key):
            who, what = (server, scenario) if mine is None else (ref_server, ref_scenario)
            result.append(Bar(name, "N/A", f"{who} {what}: not measured"))
            continue
        value, reference = getattr(mine, key), getattr(ref, key)
        ratio = value / reference
        if op == "info":
            result.append(Bar(name, "INFO", f"{value:,.2f} vs {reference:,.2f} = {ratio:.2f}x"))
            continue
        ok = ratio >= factor if op == ">=" else ratio <= factor
        detail = f"{value:,.2f} vs {reference:,.2f} = {ratio:.2f}x (needs {op} {factor:g}x)"
        if errors := (mine.errors or 0) + (ref.errors or 0):
            result.append(Bar(name, "FAIL", f"{detail}; {errors} errors in the measurement"))
        elif flagged := mine.note or ref.note:
            result.append(Bar(name, "FAIL", f"{detail}; {flagged}"))
        else:
            result.append(Bar(name, "PASS" if ok else "FAIL", detail))
    return result
