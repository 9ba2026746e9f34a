"""Split the rows and fit the preprocessing, on the training split only (so nothing leaks from val/test)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder, StandardScaler

from training.data import Dataset
from training.errors import DataError


@dataclass(frozen=True)
class Split:
    X: np.ndarray  # raw features, float32: standardization happens in the model graph
    y: np.ndarray  # class indices, int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Prepared:
    features: list[str]
    classes: list[str]
    scaler: StandardScaler
    encoder: LabelEncoder
    train: Split
    val: Split
    test: Split

    def class_prior(self) -> dict[str, float]:
        counts = np.bincount(self.train.y, minlength=len(self.classes))
        return {label: float(c / counts.sum()) for label, c in zip(self.classes, counts, strict=True)}


def check_classes(y: np.ndarray, smallest_split: float) -> None:
    labels, counts = np.unique(y, return_counts=True)
    if len(y) == 0:
        raise DataError("no rows")
    if len(labels) < 2:
        raise DataError(f"only one class ({labels[0]!r}); a classifier needs at least two")
    needed = max(3, math.ceil(1 / smallest_split))
    small = {str(label): int(c) for label, c in zip(labels, counts, strict=True) if c < needed}
    if small:
        raise DataError(
            f"too few rows to stratify: classes {small} (rows per class); every class needs at least "
            f"{needed} rows so each split gets one"
        )


def prepare(dataset: Dataset, seed: int, val_fraction: float, test_fraction: float) -> Prepared:
    """Stratified train/val/test split (seeded), then the scaler and label encoder fitted on train alone."""
    check_classes(dataset.y, min(val_fraction, test_fraction))
    index = np.arange(len(dataset.y))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=dataset.y, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=dataset.y[rest], random_state=seed
    )
    scaler = StandardScaler().fit(dataset.X[train])
    encoder = LabelEncoder().fit(dataset.y[train])

    def split(rows: np.ndarray) -> Split:
        return Split(X=dataset.X[rows].astype(np.float32), y=encoder.transform(dataset.y[rows]).astype(np.int64))

    return Prepared(
        features=list(dataset.features),
        classes=[str(c) for c in encoder.classes_],
        scaler=scaler,
        encoder=encoder,
        train=split(train),
        val=split(val),
        test=split(test),
    )
