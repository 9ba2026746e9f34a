"""`python -m benchmarks.batch [--rows N] [--workdir D]`: batch scoring's bars (issue 26), in one run.

Trains digits into a scratch repository, writes N rows (default 2,000,000) × 64 features to Parquet with 25 bad
rows (NaN, ±inf, nulls) and a `row_id`, then runs as subprocesses, one after another on the same machine:
the baseline (a plain in-process ONNX Runtime loop: pyarrow batches → session.run → a ParquetWriter), `python -m
batch` (local engine), the same killed with SIGKILL halfway and resumed, and `--engine ray` on a local Ray. Each
run's wall time and the peak RSS of its process tree (sampled from /proc every 20 ms) are measured; the checks:
rows reconcile, 25 rejects with reasons, probabilities equal the baseline's within 1e-6 in input order, the
resumed and the Ray outputs equal the uninterrupted one. A small CSV variant carries a non-numeric "abc".
Results in benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks.procs import tree_rss_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "batch.json"
CHUNK = 32_768  # batch/run.py DEFAULT_CHUNK_ROWS
BAD = 25
MIB = 1 << 20


def baseline(model: Path, source: Path, target: Path) -> None:
    """The plain loop a user would write: no checks, no rejects, no resume; ORT's default session options."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    features = json.loads((model / "manifest.json").read_text())["features"]
    classes = json.loads((model / "manifest.json").read_text())["classes"]
    writer = None
    for batch in pq.ParquetFile(source).iter_batches(batch_size=CHUNK, columns=["row_id", *features]):
        x = np.column_stack([batch.column(f).to_numpy(zero_copy_only=False) for f in features]).astype(np.float32)
        p = session.run(None, {"features": x})[0]
        table = pa.table({"row_id": batch.column("row_id"), **{f"p_{c}": p[:, i] for i, c in enumerate(classes)}})
        writer = writer or pq.ParquetWriter(str(target), table.schema)
        writer.write_table(table)
    writer.close()


def make_table(path: Path, features: list[str], rows: int) -> list[int]:
    """Digits-like rows (integers 0-16 as float64), written in chunks; returns the bad rows' ids."""
    rng = np.random.default_rng(26)
    bad = sorted(rng.choice(rows, BAD, replace=False).tolist())
    kinds = [np.nan, np.inf, -np.inf, None, np.nan]
    writer = None
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        x = rng.integers(0, 17, (n, len(features))).astype(np.float64)
        nulls = np.zeros((n, len(features)), bool)
        for row in (r for r in bad if start <= r < start + n):
            kind = kinds[bad.index(row) % len(kinds)]
            if kind is None:
                nulls[row - start, (row * 7) % len(features)] = True
            else:
                x[row - start, (row * 7) % len(features)] = kind
        columns = {"row_id": pa.array(np.arange(start, start + n))}
        columns |= {
            f: pa.array(x[:, j], mask=nulls[:, j] if nulls[:, j].any() else None) for j, f in enumerate(features)
        }
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table, row_group_size=CHUNK)
    writer.close()
    return bad


def measured(command: list[str], kill_when=None) -> dict:
    """Run `command`, sampling its process tree's RSS; with `kill_when()`, SIGKILL it once that is true."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_bytes(process.pid))
            if kill_when is not None and kill_when():
                process.send_signal(signal.SIGKILL)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.join()
    seconds = time.monotonic() - started
    return {"rc": process.returncode, "seconds": round(seconds, 2), "peak_rss_mib": round(peak[0] / MIB),
            "stdout": stdout.strip()[-400:], "stderr": stderr.strip()[-800:]}  # fmt: skip


def batch_command(repo: Path, source: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "batch", "--repository", str(repo), "--name", "digits", "--input", str(source),
            "--output", str(out), "--keep", "row_id", "--chunk-rows", str(CHUNK), "--quiet", *flags]  # fmt: skip


def check_outputs(work: Path, bad: list[int], rows: int) -> dict:
    rejects = pq.read_table(work / "local.rejects.parquet")
    summary = json.loads((work / "local.parquet.summary.json").read_text())
    ours, plain = pq.read_table(work / "local.parquet"), pq.read_table(work / "baseline.parquet")
    keep = ~np.isin(plain.column("row_id").to_numpy(), bad)
    names = [n for n in plain.column_names if n.startswith("p_")]
    difference = max(float(np.abs(ours.column(n).to_numpy() - plain.column(n).to_numpy()[keep]).max()) for n in names)
    return {
        "reconciles": summary["rows_in"] == rows == summary["rows_out"] + summary["rows_rejected"],
        "rejects": rejects.num_rows, "rejected_ids_match": rejects.column("row_id").to_pylist() == bad,
        "every_reject_has_a_reason": all(r and r.startswith("feature ") for r in rejects.column("reason").to_pylist()),
        "reasons": sorted({r.split(" is ")[1].split(" (")[0] for r in rejects.column("reason").to_pylist()}),
        "in_input_order": ours.column("row_id").to_pylist() == plain.column("row_id").to_numpy()[keep].tolist(),
        "max_abs_difference_vs_plain_ort": difference,
        "resumed_output_identical": (work / "resumed.parquet").read_bytes() == (work / "local.parquet").read_bytes(),
        "ray_output_identical": (work / "ray.parquet").read_bytes() == (work / "local.parquet").read_bytes(),
    }  # fmt: skip


def csv_variant(repo: Path, work: Path, features: list[str]) -> dict:
    """100,000 rows as CSV, five of them bad, one with the text "abc" in a feature column."""
    table = pq.read_table(work / "in.parquet", columns=["row_id", *features]).slice(0, 100_000)
    pacsv.write_csv(table, work / "in.csv")
    lines = (work / "in.csv").read_text().splitlines()
    cells = lines[1001].split(",")
    cells[5] = "abc"
    lines[1001] = ",".join(cells)
    (work / "in.csv").write_text("\n".join(lines) + "\n")
    run = measured(batch_command(repo, work / "in.csv", work / "csv.csv"))
    rejects = pacsv.read_csv(work / "csv.rejects.csv")
    return {**run, "rejects": rejects.num_rows, "reasons": rejects.column("reason").to_pylist()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / ".cache" / "batch")
    args = parser.parse_args()
    work, repo = args.workdir, args.workdir / "models"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "training", "train", "--dataset", "digits", "--name", "digits", "--quiet",
                    "--repository", str(repo), "--workdir", str(work / "run")], cwd=ROOT, check=True)  # fmt: skip
    model = repo / "digits" / "1"
    features = json.loads((model / "manifest.json").read_text())["features"]
    bad = make_table(work / "in.parquet", features, args.rows)
    code = "import sys, pathlib; from benchmarks.batch import baseline; baseline(*map(pathlib.Path, sys.argv[1:]))"
    runs = {
        "baseline": measured(
            [sys.executable, "-c", code, str(model), str(work / "in.parquet"), str(work / "baseline.parquet")]
        )
    }
    runs["local"] = measured(batch_command(repo, work / "in.parquet", work / "local.parquet"))
    parts, half = work / ".resumed.parquet.parts", args.rows // CHUNK // 2
    halfway = lambda: parts.is_dir() and len(list(parts.glob("output-*.arrow"))) >= half  # noqa: E731
    runs["killed"] = measured(batch_command(repo, work / "in.parquet", work / "resumed.parquet"), kill_when=halfway)
    runs["killed"]["parts_done"] = len(list((work / ".resumed.parquet.parts").glob("output-*.arrow")))
    runs["resumed"] = measured(batch_command(repo, work / "in.parquet", work / "resumed.parquet", "--resume"))
    runs["ray"] = measured(batch_command(repo, work / "in.parquet", work / "ray.parquet", "--engine", "ray"))
    report = {"rows": args.rows, "cpus": len(os.sched_getaffinity(0)), "runs": runs,
              "checks": check_outputs(work, bad, args.rows), "csv": csv_variant(repo, work, features)}  # fmt: skip
    report["speed_vs_plain_ort"] = round(runs["baseline"]["seconds"] / runs["local"]["seconds"], 2)
    report["ray_speed_vs_plain_ort"] = round(runs["baseline"]["seconds"] / runs["ray"]["seconds"], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for name, run in runs.items():
        rate = args.rows / run["seconds"] if name in ("baseline", "local", "ray") else 0
        speed = f"{rate:>11,.0f} rows/s" if rate else " " * 18
        print(f"{name:9} rc {run['rc']:>4}  {run['seconds']:7.2f} s  {speed}  peak {run['peak_rss_mib']} MiB")
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "csv")}, indent=2))
    print("csv:", report["csv"]["rejects"], "rejects", report["csv"]["reasons"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
