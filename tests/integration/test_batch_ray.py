"""--engine ray on one local Ray (started once for the module: Ray's start-up is the slow part) gives the local
engine's files; and the KubeRay RayJob that runs it on a cluster agrees with the CLI and the pinned Ray."""

from __future__ import annotations

import copy
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from batch.__main__ import parser
from batch.run import Request, score_table
from bundle import cpus
from tests.conftest import ROOT
from tests.integration.test_kubernetes import crd_validator

RAYJOB = ROOT / "deploy" / "k8s" / "batch" / "rayjob.yaml"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=cpus.usable(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    yield
    ray.shutdown()


def test_ray_engine_writes_the_local_engines_files(trained, local_ray, tmp_path):
    features = trained[1].features
    x = np.random.default_rng(5).uniform(1, 7, (5000, 4))
    x[[7, 4000], [1, 3]] = [np.nan, np.inf]
    table = pa.table({"row_id": np.arange(5000), **{name: x[:, j] for j, name in enumerate(features)}})
    pq.write_table(table.slice(0, 3000), tmp_path / "a.parquet")  # two files: order across files counts too
    pq.write_table(table.slice(3000), tmp_path / "b.parquet")
    summaries = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine / "out.parquet"
        request = Request(repository=trained[2], name="iris", input=str(tmp_path / "*.parquet"), output=out,
                          keep=["row_id"], chunk_rows=512, engine=engine, quiet=True)  # fmt: skip
        request.output.parent.mkdir()
        summaries[engine] = score_table(request)
    for name in ("out.parquet", "out.rejects.parquet"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert pq.read_table(tmp_path / "ray" / "out.rejects.parquet").column("row_id").to_pylist() == [7, 4000]
    assert summaries["ray"]["engine"] == "ray" and summaries["ray"]["rows_in"] == 5000
    assert {k: v for k, v in summaries["ray"].items() if k in ("rows_out", "rows_rejected", "manifest_sha256")} == {
        k: v for k, v in summaries["local"].items() if k in ("rows_out", "rows_rejected", "manifest_sha256")
    }


def test_the_rayjob_runs_the_cli_on_the_pinned_ray():
    job = yaml.safe_load(RAYJOB.read_text())
    validator = crd_validator(job["apiVersion"], job["kind"])
    assert not list(validator.iter_errors(job))
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["python", "-m", "batch"]
    args = parser().parse_args(command[3:])
    assert args.engine == "ray" and args.repository.as_posix() == "/models"
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert f"ray=={ray.__version__}" in (ROOT / "constraints.txt").read_text().splitlines()
    typo = copy.deepcopy(job)
    typo["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2
    assert not validator.is_valid(typo)
