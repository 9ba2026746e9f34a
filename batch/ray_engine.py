"""`--engine ray`: the same scoring on Ray Data, on a local Ray or on a cluster (`--address`, `RAY_ADDRESS`).

`read_parquet`/`read_csv` over the files `batch/inputs.py` resolved → `map_batches` on an actor pool of
`RayScorer`s, each holding one verified session (bundle/session.py, the server's) → the driver, in input order
(`preserve_order`), where the same part and output writers as the local engine write the same files. An actor
hands back a chunk's output and rejects (two schemas) as Arrow IPC bytes in a one-row table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import ray
import ray.data

import batch
from batch.columns import Columns
from batch.parts import from_ipc, to_ipc
from batch.scorer import Scored, Scorer
from bundle import cpus
from bundle.session import open_verified


class RayScorer:
    """One actor: the version verified again where it runs, then chunk after chunk."""

    def __init__(self, folder: str, columns: Columns):
        self.scorer = Scorer(open_verified(Path(folder)), columns)

    def __call__(self, chunk: pa.Table) -> pa.Table:
        scored = self.scorer.score(chunk)
        return pa.table({"output": [to_ipc(scored.output)], "rejects": [to_ipc(scored.rejects)]})


def score(source, folder: Path, columns: Columns, request) -> Iterator[Scored]:
    _connect(request.address)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    paths = [str(path.resolve()) for path in source.files]
    if source.format == "csv":
        dataset = ray.data.read_csv(paths, convert_options=source.csv_convert_options(list(columns.features)))
        dataset = dataset.select_columns(columns.read)
    else:
        dataset = ray.data.read_parquet(paths, columns=columns.read)
    actors = max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)  # a CPU left for reading
    scored = dataset.map_batches(RayScorer, fn_constructor_args=(str(folder.resolve()), columns), concurrency=actors,
                                 batch_size=request.chunk_rows, batch_format="pyarrow", num_cpus=1)  # fmt: skip
    for block in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        for output, rejects in zip(
            block.column("output").to_pylist(), block.column("rejects").to_pylist(), strict=True
        ):
            yield Scored(from_ipc(output), from_ipc(rejects))


def _connect(address: str | None) -> None:
    """A cluster when one is named (here or in RAY_ADDRESS), else a local Ray sized to this process's CPUs; the
    local one's workers import this checkout's `batch` (an installed tabserve has it anyway)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    here = str(Path(batch.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=cpus.usable(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})  # fmt: skip
