"""Where the rows come from: a file, a folder or a glob of CSV or Parquet files, read as a pyarrow dataset.

Both engines resolve the input here, so they read the same files in the same order (sorted paths). CSV feature
columns are read as text and parsed by `batch/rejects.py`: a type inferred from the first block would make a
bad value further down ("abc") fail the whole scan instead of rejecting one row.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from batch.errors import BatchError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Source:
    files: tuple[Path, ...]
    format: str  # "parquet" or "csv"

    def csv_convert_options(self, features: list[str]) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(column_types=dict.fromkeys(features, pa.string()))

    def dataset(self, features: list[str]) -> ds.Dataset:
        """The files as one dataset: its schema (the first file's) is what columns are matched against."""
        paths = [str(path) for path in self.files]
        if self.format == "csv":
            return ds.dataset(paths, format=ds.CsvFileFormat(convert_options=self.csv_convert_options(features)))
        return ds.dataset(paths, format="parquet")

    def batches(self, schema: pa.Schema, features: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        """Record batches of `schema`'s columns, file after file, read only as fast as they are taken.

        Not the dataset's scanner: with a consumer slower than the disk it read a whole file ahead (512 MiB of a
        2M × 64 table, measured with a slow consumer), where a file reader pulled batch by batch holds ~130 MiB.
        A file whose columns cannot be read as the first file's types fails the run there.
        """
        for path in self.files:
            if self.format == "csv":
                convert = self.csv_convert_options(features)
                convert.include_columns = schema.names
                reader = pacsv.open_csv(path, convert_options=convert)
            else:
                reader = pq.ParquetFile(path).iter_batches(batch_size=rows, columns=schema.names)
            for batch in reader:
                batch = batch.select(schema.names)
                yield batch if batch.schema.equals(schema) else batch.cast(schema)

    def fingerprint(self) -> list[dict]:
        """What the input looks like on disk (paths, sizes, mtimes): a resume must read the same rows."""
        return [
            {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in self.files
        ]


def resolve(text: str) -> Source:
    """The files `text` names (a file, a folder searched recursively, or a glob), sorted; one format for all."""
    path = Path(text)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS and not _hidden(p, path)]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
    if not files:
        raise BatchError(f"--input {text}: no such file, or no .csv/.parquet file in it")
    formats = {FORMATS.get(p.suffix.lower()) for p in files}
    if None in formats or len(formats) > 1:
        raise BatchError(
            f"--input {text}: expected only .csv or only .parquet files, got {sorted(map(str, files))[:5]}"
        )
    return Source(tuple(sorted(files)), formats.pop())


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)
