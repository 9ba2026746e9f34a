"""One batch run, start to finish: model, columns, parts, an engine's scored chunks in order, the final files.

Everything that can be refused (model, input, columns, output format, a resume that does not match) is checked
before a row is scored, and nothing is written then. Rows in = rows out + rows rejected, always.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from tqdm import tqdm

from batch import inputs, output, version
from batch.columns import Columns, match
from batch.errors import BatchError
from batch.parts import Parts
from batch.rejects import REASON
from batch.scorer import Scored, Scorer
from bundle import cpus
from bundle.session import VerifiedModel

DEFAULT_CHUNK_ROWS = 32_768  # 2M × 64 digits rows: 695 MiB peak RSS at 32,768 on 2 cores, 832 MiB at 65,536


@dataclass
class Request:
    repository: Path
    name: str
    input: str
    output: Path
    version: int | None = None
    rejects: Path | None = None
    keep: list[str] = field(default_factory=list)
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    engine: str = "local"
    resume: bool = False
    quiet: bool = False
    address: str | None = None  # a Ray cluster; None: RAY_ADDRESS, else a local Ray


@dataclass
class Counts:
    rows_out: int = 0
    rows_rejected: int = 0

    def add(self, scored: Scored) -> None:
        self.rows_out += scored.output.num_rows
        self.rows_rejected += scored.rejects.num_rows


@dataclass
class Plan:
    """What a run was checked to be before it scores a row."""

    request: Request
    out: Path
    rejects: Path
    model: VerifiedModel
    source: inputs.Source
    dataset: ds.Dataset
    columns: Columns
    parts: Parts


def score_table(request: Request) -> dict:
    """Score `request.input` into `request.output` (and the rejects, and the summary); returns the summary."""
    started = time.monotonic()
    plan = prepare(request)
    finished = plan.parts.start(job_record(plan), request.resume)
    scorer = Scorer(plan.model, plan.columns)
    table_files = open_files(plan, scorer)
    counts = Counts()
    total = plan.dataset.count_rows() if plan.source.format == "parquet" else None
    with tqdm(total=total, unit="rows", unit_scale=True, disable=request.quiet or not sys.stderr.isatty()) as bar:
        for scored in _scored(plan, scorer, finished):
            table_files[0].add(scored.output)
            table_files[1].add(scored.rejects)
            counts.add(scored)
            bar.update(scored.rows_in)
    table_files[1].commit()
    table_files[0].commit()  # the output last: once it is there, so is everything it reconciles with
    summary = summarise(plan, counts, time.monotonic() - started, len(finished))
    output.write_summary(plan.out, summary)
    plan.parts.remove()
    return summary


def prepare(request: Request) -> Plan:
    out = Path(request.output)
    rejects = Path(request.rejects or output.default_rejects(out))
    output.file_format(out), output.file_format(rejects)
    if request.chunk_rows < 1:
        raise BatchError(f"--chunk-rows must be at least 1, got {request.chunk_rows}")
    if request.engine == "ray" and request.resume:
        raise BatchError("--resume continues local runs only (a Ray run is restarted whole)")
    model = version.open_served(request.repository, request.name, request.version)
    source = inputs.resolve(request.input)
    dataset = source.dataset(model.manifest.features)
    columns = match(dataset.schema, model.manifest, request.keep)
    return Plan(request, out, rejects, model, source, dataset, columns, Parts(out))


def job_record(plan: Plan) -> dict:
    """What the parts belong to: a resume must match it exactly."""
    manifest = plan.model.manifest
    return {"input": plan.source.fingerprint(), "model": manifest.name, "version": manifest.version,
            "manifest_sha256": plan.model.manifest_sha256, "keep": list(plan.columns.keep),
            "chunk_rows": plan.request.chunk_rows, "output": str(plan.out.resolve()),
            "rejects": str(plan.rejects.resolve())}  # fmt: skip


def open_files(plan: Plan, scorer: Scorer) -> tuple[output.TableFile, output.TableFile]:
    manifest, rows, folder = plan.model.manifest, plan.request.chunk_rows, plan.parts.folder
    meta = output.metadata(manifest.name, manifest.version, plan.model.manifest_sha256)
    read = [plan.dataset.schema.field(c) for c in plan.columns.read]
    rejects_schema = pa.schema([*read, pa.field(REASON, pa.string())]).with_metadata(meta)
    output_schema = scorer.output_schema(plan.dataset.schema).with_metadata(meta)
    scored = output.TableFile(plan.out, folder / f"final{plan.out.suffix}", output_schema, rows)
    rejected = output.TableFile(plan.rejects, folder / f"final-rejects{plan.rejects.suffix}", rejects_schema, rows)
    return scored, rejected


def summarise(plan: Plan, counts: Counts, seconds: float, resumed: int) -> dict:
    rows_in = counts.rows_out + counts.rows_rejected
    return {"rows_in": rows_in, "rows_out": counts.rows_out, "rows_rejected": counts.rows_rejected,
            "model": plan.model.manifest.name, "version": plan.model.manifest.version,
            "manifest_sha256": plan.model.manifest_sha256, "seconds": round(seconds, 3),
            "rows_per_second": round(rows_in / seconds, 1) if seconds > 0 else None,
            "engine": plan.request.engine, "input": plan.request.input, "output": str(plan.out),
            "rejects": str(plan.rejects), "resumed_chunks": resumed}  # fmt: skip


def _scored(plan: Plan, scorer: Scorer, finished: set[int]) -> Iterator[Scored]:
    request = plan.request
    if request.engine == "ray":
        from batch import ray_engine  # only Ray runs need ray installed

        for index, scored in enumerate(ray_engine.score(plan.source, plan.model.folder, plan.columns, request)):
            plan.parts.write(index, scored)
            yield scored
        return
    workers = cpus.usable()
    pa.set_cpu_count(workers)
    schema = pa.schema([plan.dataset.schema.field(name) for name in plan.columns.read])
    batches = plan.source.batches(schema, list(plan.columns.features), request.chunk_rows)
    yield from ordered_map_tasks(chunks(batches, request.chunk_rows), scorer, plan.parts, finished, workers)


def ordered_map_tasks(tables, scorer: Scorer, parts: Parts, finished: set[int], workers: int) -> Iterator[Scored]:
    """Each chunk scored and saved as a part in a worker thread (or, when finished before, read back)."""
    from batch.local import ordered_map

    def score_and_save(index: int, chunk: pa.Table) -> Scored:
        scored = scorer.score(chunk)
        parts.write(index, scored)
        return scored

    tasks = (partial(parts.read, i) if i in finished else partial(score_and_save, i, t) for i, t in enumerate(tables))
    return ordered_map(tasks, workers, depth=workers + 1)


def chunks(batches, rows: int) -> Iterator[pa.Table]:
    """Record batches of any size → tables of exactly `rows` rows (the last shorter): chunk `i` always holds the
    same rows, whatever the files' row groups, which is what lets a resume skip finished chunks."""
    pending, count = [], 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch, count = batch.slice(take), count + take
            if count == rows:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)
