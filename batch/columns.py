"""Which input columns a run reads: the model's features by name, and the columns the user keeps.

Checked against the input's schema before any row is read, so a table that lacks a feature fails at once with
the missing names instead of rejecting every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from batch.errors import BatchError
from bundle.manifest import Manifest

LABEL = "label"
PROBABILITY_PREFIX = "p_"


@dataclass(frozen=True)
class Columns:
    features: tuple[str, ...]
    keep: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def read(self) -> list[str]:
        """What is read from the input: kept columns first (as kept), then the features not already among them."""
        return [*self.keep, *(f for f in self.features if f not in self.keep)]

    @property
    def probabilities(self) -> list[str]:
        return [PROBABILITY_PREFIX + label for label in self.classes]


def match(schema: pa.Schema, manifest: Manifest, keep: list[str]) -> Columns:
    """The columns of a run over a table of `schema`, or `BatchError` naming what is missing or unusable."""
    names = set(schema.names)
    missing = [f for f in manifest.features if f not in names]
    if missing:
        raise BatchError(
            f"the input lacks {len(missing)} of model {manifest.name!r} v{manifest.version}'s "
            f"{manifest.n_features} feature columns: {missing}"
        )
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise BatchError(f"--keep names columns the input does not have: {unknown}; it has {schema.names}")
    columns = Columns(tuple(manifest.features), tuple(dict.fromkeys(keep)), tuple(manifest.classes))
    clashes = sorted(set(columns.keep) & {LABEL, *columns.probabilities})
    if clashes:
        raise BatchError(f"--keep {clashes}: the output writes columns of those names itself")
    unusable = [
        f"{f} ({schema.field(f).type})" for f in manifest.features if not _numbers_or_text(schema.field(f).type)
    ]
    if unusable:
        raise BatchError(f"feature columns must hold numbers or text, these do not: {unusable}")
    return columns


def _numbers_or_text(kind: pa.DataType) -> bool:
    types = pa.types
    return (types.is_integer(kind) or types.is_floating(kind) or types.is_decimal(kind) or types.is_boolean(kind)
            or types.is_string(kind) or types.is_large_string(kind) or types.is_null(kind))  # fmt: skip
