"""Datasets: the built-in ones by name, or a CSV / Parquet file with a label column.

Everything a user can get wrong about a data file fails here, before any training, with a `DataError`
that names the column, the problem and where it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets as skdatasets

from training.errors import DataError


@dataclass(frozen=True)
class Dataset:
    source: str
    features: list[str]
    X: np.ndarray  # float64 [rows, features]
    y: np.ndarray  # labels as given: integers or strings

    def fingerprint(self) -> str:
        """sha256 over feature names, values and labels: the same data always gives the same digest."""
        digest = hashlib.sha256()
        digest.update("\x1f".join(self.features).encode())
        digest.update(np.ascontiguousarray(self.X, dtype=np.float64).tobytes())
        digest.update("\x1f".join(map(str, self.y)).encode())
        return digest.hexdigest()


def _spiral(points_per_class: int = 500, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The CS231n / Made With ML spiral the seed tutorials train on: arms of noisy angle, radius 0→1."""
    rng = np.random.RandomState(0)
    X, y = [], []
    for j in range(classes):
        r = np.linspace(0.0, 1.0, points_per_class)
        t = np.linspace(j * 4, (j + 1) * 4, points_per_class) + rng.randn(points_per_class) * 0.2
        X.append(np.c_[r * np.sin(t), r * np.cos(t)])
        y += [f"c{j + 1}"] * points_per_class
    return np.concatenate(X), np.array(y)


def _sklearn_bunch(loader: Callable, feature_names: list[str] | None = None) -> Callable[[], tuple]:
    def load():
        bunch = loader()
        names = feature_names or [str(n) for n in bunch.feature_names]
        target_names = getattr(bunch, "target_names", None)
        labels = np.array([str(n) for n in target_names])[bunch.target] if target_names is not None else bunch.target
        return bunch.data, labels, names

    return load


def _generated(make: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Callable[[], tuple]:
    def load():
        X, y = make()
        return X, y, [f"x{i + 1}" for i in range(X.shape[1])]

    return load


BUILTIN: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]] = {
    "iris": _sklearn_bunch(skdatasets.load_iris),
    "wine": _sklearn_bunch(skdatasets.load_wine),
    "breast_cancer": _sklearn_bunch(skdatasets.load_breast_cancer),
    "digits": _sklearn_bunch(skdatasets.load_digits),
    "spiral": _generated(_spiral),
    "circles": _generated(lambda: skdatasets.make_circles(n_samples=1000, noise=0.2, factor=0.5, random_state=1)),
    "moons": _generated(lambda: skdatasets.make_moons(n_samples=1000, noise=0.3, random_state=0)),
}


def builtin_name(source: str) -> str | None:
    name = source.strip().lower().replace("-", "_")
    return name if name in BUILTIN else None


def load(source: str, label_column: str | None = None, features: list[str] | None = None) -> Dataset:
    """A built-in dataset by name (`breast-cancer` and `breast_cancer` both work) or a data file."""
    name = builtin_name(source)
    if name is not None:
        if label_column or features:
            raise DataError(f"--label-column and --features apply to data files, not the built-in {name!r}")
        X, y, names = BUILTIN[name]()
        return Dataset(source=name, features=names, X=np.asarray(X, dtype=np.float64), y=np.asarray(y))
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an existing file")
    return load_file(path, label_column, features)


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, skipinitialspace=True)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no header, no rows)") from None
    except Exception as e:  # pandas and pyarrow raise many types for an unreadable file
        raise DataError(f"{path}: cannot read it as {suffix[1:]}: {e}") from None
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use .csv or .parquet")


def _rows(mask: pd.Series) -> str:
    """Describe which data rows (1-based, header excluded) a mask selects: the count and the first few."""
    rows = [int(i) + 1 for i in np.flatnonzero(mask.to_numpy())]
    shown = ", ".join(map(str, rows[:5])) + (", …" if len(rows) > 5 else "")
    return f"{len(rows)} row{'s' if len(rows) != 1 else ''} (data row {shown})"


def load_file(path: Path, label_column: str | None, features: list[str] | None = None) -> Dataset:
    frame = _read_table(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if label_column is None:
        raise DataError(f"{path}: --label-column is required for a data file; its columns are {columns}")
    if label_column not in columns:
        raise DataError(f"{path}: label column {label_column!r} not found; columns are {columns}")
    if features is None:
        features = [c for c in columns if c != label_column]
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise DataError(f"{path}: feature columns {unknown} not found; columns are {columns}")
    if label_column in features:
        raise DataError(f"{path}: {label_column!r} is the label column and cannot also be a feature")
    if not features:
        raise DataError(f"{path}: no feature columns besides the label column {label_column!r}")
    if len(frame) == 0:
        raise DataError(f"{path}: no rows")

    for column in [*features, label_column]:
        missing = frame[column].isna()
        if missing.any():
            raise DataError(f"{path}: column {column!r} has empty or NaN values in {_rows(missing)}")

    numeric = {}
    for column in features:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            example = frame[column][bad].iloc[0]
            raise DataError(
                f"{path}: feature column {column!r} must be numeric; {_rows(bad)} are not, e.g. {example!r}"
            )
        infinite = ~np.isfinite(values.to_numpy(dtype=np.float64))
        if infinite.any():
            raise DataError(f"{path}: feature column {column!r} has infinite values in {_rows(pd.Series(infinite))}")
        numeric[column] = values.to_numpy(dtype=np.float64)

    X = np.column_stack([numeric[c] for c in features])
    return Dataset(source=str(path), features=list(features), X=X, y=_labels(frame[label_column]))


def _labels(column: pd.Series) -> np.ndarray:
    """Integer labels stay integers (so 2 sorts before 10), whole floats become integers, the rest strings."""
    if pd.api.types.is_bool_dtype(column):
        return column.astype(str).to_numpy()
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(column) and (column == column.round()).all():
        return column.to_numpy(dtype=np.int64)
    return column.astype(str).to_numpy()
