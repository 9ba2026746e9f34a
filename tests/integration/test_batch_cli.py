"""python -m batch as a user runs it: a subprocess killed with SIGKILL and resumed, and the same numbers as a real
server's POST /predict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

ROWS = 300_000


def batch_command(repo, *args: str) -> list[str]:
    return [sys.executable, "-m", "batch", "--repository", str(repo), "--name", "iris", "--quiet", *args]


def run_batch(repo, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(batch_command(repo, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def big_table(trained, tmp_path_factory):
    features = trained[1].features
    rng = np.random.default_rng(3)
    x = rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], (ROWS, 4))
    x[[11, 150_000, 299_999], [0, 1, 2]] = np.nan
    path = tmp_path_factory.mktemp("big") / "in.parquet"
    columns = {"row_id": np.arange(ROWS), **{name: x[:, j] for j, name in enumerate(features)}}
    pq.write_table(pa.table(columns), path, row_group_size=50_000)
    return path


def test_sigkill_then_resume_gives_the_uninterrupted_file(trained, big_table, tmp_path):
    repo = trained[2]
    flags = ["--input", str(big_table), "--keep", "row_id", "--chunk-rows", "500"]
    assert run_batch(repo, *flags, "--output", str(tmp_path / "whole.parquet")).returncode == 0
    out, parts = tmp_path / "killed.parquet", tmp_path / ".killed.parquet.parts"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(batch_command(repo, *flags, "--output", str(out)), cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("output-*.arrow")) if parts.is_dir() else []) < 50 and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "finished before it could be killed: make the run slower"
    assert not out.exists()
    done = len(list(parts.glob("output-*.arrow")))
    assert 50 <= done < ROWS // 500
    refused = run_batch(repo, *flags, "--output", str(out))
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = run_batch(repo, *flags, "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert (tmp_path / "killed.rejects.parquet").read_bytes() == (tmp_path / "whole.rejects.parquet").read_bytes()
    assert "rows in 300,000 = out 299,997 + rejected 3" in resumed.stdout


def test_resume_is_refused_for_another_input(trained, big_table, tmp_path):
    repo, out = trained[2], tmp_path / "out.parquet"
    parts = tmp_path / ".out.parquet.parts"
    parts.mkdir()
    first = run_batch(repo, "--input", str(big_table), "--output", str(out), "--resume", "--chunk-rows", "100000")
    assert first.returncode == 0  # --resume with nothing to resume: a whole run
    parts.mkdir()
    (parts / "job.json").write_text('{"input": [], "model": "iris"}')
    refused = run_batch(repo, "--input", str(big_table), "--output", str(out), "--resume")
    assert refused.returncode == 2
    assert "was started with another" in refused.stderr and "input" in refused.stderr


def test_a_row_gets_the_bits_post_predict_answers(server, repo, tmp_path):
    """The shared server's iris: v3 is corrupted, so both pick v2 (the version policy's newest servable one)."""
    features = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    rng = np.random.default_rng(11)
    x = rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], (300, 4)).astype(np.float32).astype(np.float64)
    pq.write_table(pa.table({name: x[:, j] for j, name in enumerate(features)}), tmp_path / "in.parquet")
    result = run_batch(repo, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet"),
                       "--chunk-rows", "64")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "skipping: iris v3 must not be served" in result.stderr
    output = pq.read_table(tmp_path / "out.parquet")
    assert output.schema.metadata[b"tabserve.version"] == b"2"
    answer = httpx.post(server.url + "/predict", json={"instances": x.tolist()}, timeout=30)
    assert answer.status_code == 200 and answer.json()["version"] == 2
    classes = ["setosa", "versicolor", "virginica"]
    served = np.array([[p["probabilities"][c] for c in classes] for p in answer.json()["predictions"]], np.float32)
    scored = np.column_stack([output.column(f"p_{c}").to_numpy() for c in classes])
    assert scored.dtype == np.float32 and np.array_equal(scored.view(np.uint32), served.view(np.uint32))
    assert output.column("label").to_pylist() == [p["label"] for p in answer.json()["predictions"]]
