"""The files a run leaves: the output and the rejects (Parquet or CSV by extension) and the summary JSON.

Both tables are written while the run goes, to temporary files in the parts folder, and renamed into place only
when every row is in: an output appears whole or not at all. Row groups are exactly `chunk_rows` rows whatever
sizes the tables arrive in (`Regrouped`), so an uninterrupted run, a resumed one and a Ray run write the same
bytes. Parquet files carry the model, its version and its manifest's sha256 in their schema metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batch.errors import BatchError
from batch.inputs import FORMATS
from bundle.atomic import make_readable, write_text_atomic


def file_format(path: Path) -> str:
    try:
        return FORMATS[Path(path).suffix.lower()]
    except KeyError:
        raise BatchError(f"{path}: write .parquet or .csv (the extension picks the format)") from None


def default_rejects(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


def summary_path(output: Path) -> Path:
    return output.with_name(output.name + ".summary.json")


class Regrouped:
    """Tables in, groups of exactly `rows` rows out (the last one shorter), each in one contiguous chunk."""

    def __init__(self, write: Callable[[pa.Table], None], rows: int):
        self.write, self.rows = write, rows
        self.pending: list[pa.Table] = []
        self.count = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.count += table.num_rows
        while self.count >= self.rows:
            whole = pa.concat_tables(self.pending)
            self.write(whole.slice(0, self.rows).combine_chunks())
            rest = whole.slice(self.rows)
            self.pending, self.count = [rest], rest.num_rows

    def close(self) -> None:
        if self.count:
            self.write(pa.concat_tables(self.pending).combine_chunks())


class TableFile:
    """One output table being written to `tmp`, renamed to `path` by `commit`."""

    def __init__(self, path: Path, tmp: Path, schema: pa.Schema, rows: int):
        self.path, self.tmp, self.schema = Path(path), Path(tmp), schema
        if file_format(path) == "parquet":
            self.writer = pq.ParquetWriter(str(tmp), schema)
        else:
            self.writer = pacsv.CSVWriter(str(tmp), schema)
        self.groups = Regrouped(self._write, rows)

    def _write(self, table: pa.Table) -> None:
        self.writer.write_table(table if table.schema.equals(self.schema) else table.cast(self.schema))

    def add(self, table: pa.Table) -> None:
        self.groups.add(table)

    def commit(self) -> None:
        self.groups.close()
        self.writer.close()
        make_readable(self.tmp)
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)


def metadata(manifest_name: str, version: int, manifest_sha256: str) -> dict[bytes, bytes]:
    return {b"tabserve.model": manifest_name.encode(), b"tabserve.version": str(version).encode(),
            b"tabserve.manifest_sha256": manifest_sha256.encode()}  # fmt: skip


def write_summary(output: Path, summary: dict) -> Path:
    path = summary_path(output)
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
    return path
