"""One chunk of rows → its output rows (kept columns, label, a probability per class) and its rejected rows.

The same object runs in the local engine's threads and in each of Ray's actors: what a row gets never depends on
the engine. Probabilities stay float32, exactly what ONNX Runtime returned (and what the server answers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.columns import LABEL, Columns
from batch.rejects import check, rejected_rows
from bundle.session import VerifiedModel


@dataclass(frozen=True)
class Scored:
    output: pa.Table
    rejects: pa.Table

    @property
    def rows_in(self) -> int:
        return self.output.num_rows + self.rejects.num_rows


class Scorer:
    def __init__(self, model: VerifiedModel, columns: Columns):
        self.model, self.columns = model, columns
        self.labels = pa.array(columns.classes, pa.string())

    def score(self, chunk: pa.Table) -> Scored:
        checked = check(chunk, self.columns.features)
        good = ~checked.bad
        matrix = checked.matrix[good] if checked.bad.any() else checked.matrix
        probabilities = self.model.predict(matrix) if len(matrix) else np.empty((0, len(self.labels)), np.float32)
        kept = chunk.select(list(self.columns.keep))
        if checked.bad.any():
            kept = kept.filter(pa.array(good))
        return Scored(self._output(kept, probabilities), rejected_rows(chunk, checked, self.columns.read))

    def _output(self, kept: pa.Table, probabilities: np.ndarray) -> pa.Table:
        best = pa.array(probabilities.argmax(axis=1) if len(probabilities) else np.empty(0, np.int64))
        output = kept.append_column(LABEL, pc.take(self.labels, best))
        for index, name in enumerate(self.columns.probabilities):
            output = output.append_column(name, pa.array(probabilities[:, index]))
        return output

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The output's columns for an input of `input_schema` (for files that must exist with no rows)."""
        kept = [input_schema.field(name) for name in self.columns.keep]
        return pa.schema(
            [*kept, pa.field(LABEL, pa.string()), *(pa.field(n, pa.float32()) for n in self.columns.probabilities)]
        )
