"""The parts of a run, in a folder beside the output: what makes `--resume` continue instead of starting over.

`.<output name>.parts/` holds `job.json` (the input files, the model version and the options the run was started
with) and, per input chunk `i`, `rejects-i.arrow` then `output-i.arrow`, each written to a temporary name and
renamed into place (bundle/atomic.py): chunk `i` is finished exactly when `output-i.arrow` exists. A resume with
another input, model or options is refused: its parts would not belong together. Arrow IPC files cost next to
nothing to write and are read back memory-mapped; the final file is encoded once, from them and the new parts.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa

from batch.errors import BatchError
from batch.scorer import Scored
from bundle.atomic import write_atomic, write_text_atomic

JOB_FILE = "job.json"
OUTPUT_PART = re.compile(r"^output-(\d+)\.arrow$")


class Parts:
    def __init__(self, output: Path):
        self.folder = output.parent / f".{output.name}.parts"

    def start(self, job: dict, resume: bool) -> set[int]:
        """Begin a run of `job` (or with `resume`, continue one); returns the chunks already finished."""
        recorded = self._recorded_job()
        if recorded is not None and not resume:
            raise BatchError(
                f"{self.folder} holds the parts of an unfinished run: pass --resume to continue it, or remove it"
            )
        if recorded is not None:
            changed = sorted(key for key in {*job, *recorded} if job.get(key) != recorded.get(key))
            if changed:
                raise BatchError(
                    f"--resume: the unfinished run in {self.folder} was started with another {', '.join(changed)}; "
                    "run with the same input, model and options, or remove that folder to start over"
                )
            return self.finished()
        shutil.rmtree(self.folder, ignore_errors=True)  # a run that died before recording its job: nothing to keep
        self.folder.mkdir(parents=True)
        write_text_atomic(self.folder / JOB_FILE, json.dumps(job, indent=2, sort_keys=True) + "\n")
        return set()

    def _recorded_job(self) -> dict | None:
        try:
            return json.loads((self.folder / JOB_FILE).read_text())
        except (OSError, ValueError):
            return None

    def finished(self) -> set[int]:
        return {int(m[1]) for p in self.folder.iterdir() if (m := OUTPUT_PART.match(p.name))}

    def write(self, index: int, scored: Scored) -> None:
        """Rejects first, output last: the output part's rename is what marks the chunk finished."""
        _write_ipc(self.folder / f"rejects-{index}.arrow", scored.rejects)
        _write_ipc(self.folder / f"output-{index}.arrow", scored.output)

    def read(self, index: int) -> Scored:
        return Scored(
            _read_ipc(self.folder / f"output-{index}.arrow"), _read_ipc(self.folder / f"rejects-{index}.arrow")
        )

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_ipc(path: Path, table: pa.Table) -> None:
    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    write_atomic(path, write)


def _read_ipc(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC bytes (how Ray's actors hand back two tables of different schemas per chunk)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
