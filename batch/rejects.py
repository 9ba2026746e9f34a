"""Which rows can be scored: every feature a finite number. Each other row is rejected with a reason per value.

The check is vectorised (one float32 matrix, one `isfinite`); reasons are worked out only for the rows that fail,
from the values as read, so they name the feature and what is wrong with it (`feature "pixel_3" is NaN`,
`… is not a number: "abc"`, `… is missing`). The matrix is the model's input, float32 as a server casts JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REASON = "reason"


@dataclass(frozen=True)
class Checked:
    matrix: np.ndarray  # float32 (rows, features): the model's input for every row, good or not
    bad: np.ndarray  # bool per row
    reasons: list[str]  # one per bad row, in row order


def check(table: pa.Table, features: tuple[str, ...]) -> Checked:
    matrix = np.empty((table.num_rows, len(features)), dtype=np.float32)
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, and is rejected as such
        for j, name in enumerate(features):
            matrix[:, j] = as_float64(table.column(name))
    bad = ~np.isfinite(matrix).all(axis=1)
    reasons = [row_reason(table, features, matrix, int(r)) for r in np.flatnonzero(bad)]
    return Checked(matrix, bad, reasons)


def as_float64(column: pa.ChunkedArray) -> np.ndarray:
    """Numbers as float64 (missing and unparsable values: NaN; `row_reason` tells them apart)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:  # some value is not a number: parse this chunk value by value
            return np.array([parse_number(v) for v in column.to_pylist()], dtype=np.float64)
    elif column.type != pa.float64():
        column = pc.cast(column, pa.float64())
    return column.to_numpy()


def parse_number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def row_reason(table: pa.Table, features: tuple[str, ...], matrix: np.ndarray, row: int) -> str:
    """Every unusable value of one row, in feature order."""
    columns = np.flatnonzero(~np.isfinite(matrix[row]))
    return "; ".join(value_problem(features[j], table.column(features[j])[row].as_py()) for j in columns)


def value_problem(name: str, raw: object) -> str:
    what = f"feature {json.dumps(name)}"
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return f"{what} is missing"
    if isinstance(raw, str):
        value = parse_number(raw)
        if math.isnan(value) and raw.strip().lower().lstrip("+-") not in ("nan",):
            return f"{what} is not a number: {json.dumps(raw)}"
    else:
        value = float(raw)
    if math.isnan(value):
        return f"{what} is NaN"
    if math.isinf(value):
        return f"{what} is infinite ({value})"
    return f"{what} is beyond float32's range: {raw}"


def rejected_rows(table: pa.Table, checked: Checked, read: list[str]) -> pa.Table:
    """The rejected rows as read (kept columns and features, their input types), with their reasons."""
    rows = table.select(read).filter(pa.array(checked.bad))
    return rows.append_column(REASON, pa.array(checked.reasons, pa.string()))
