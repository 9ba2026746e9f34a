import numpy as np
import pytest

from training import data
from training.data import Dataset
from training.errors import DataError
from training.preprocess import prepare


def test_split_is_stratified_70_15_15_disjoint_and_seeded():
    dataset = data.load("digits")
    a = prepare(dataset, seed=0, val_fraction=0.15, test_fraction=0.15)
    assert (len(a.train), len(a.val), len(a.test)) == (1257, 270, 270)
    for split in (a.train, a.val, a.test):  # every class in every split, in its overall proportion
        shares = np.bincount(split.y, minlength=10) / len(split)
        assert np.allclose(shares, 0.1, atol=0.02)
    rows = [tuple(r) for s in (a.train, a.val, a.test) for r in s.X]
    assert len(set(rows)) == len({tuple(r) for r in dataset.X})  # disjoint and complete (up to duplicate rows)
    b = prepare(dataset, seed=0, val_fraction=0.15, test_fraction=0.15)
    c = prepare(dataset, seed=1, val_fraction=0.15, test_fraction=0.15)
    assert np.array_equal(a.test.X, b.test.X) and not np.array_equal(a.test.X, c.test.X)


def test_scaler_and_encoder_see_only_the_training_split():
    prepared = prepare(data.load("wine"), seed=0, val_fraction=0.15, test_fraction=0.15)
    assert np.allclose(prepared.scaler.mean_, prepared.train.X.astype(np.float64).mean(axis=0), rtol=1e-5)
    everything = np.concatenate([prepared.train.X, prepared.val.X, prepared.test.X]).astype(np.float64)
    assert not np.allclose(prepared.scaler.mean_, everything.mean(axis=0), rtol=1e-5)
    assert prepared.classes == ["class_0", "class_1", "class_2"]
    assert sum(prepared.class_prior().values()) == pytest.approx(1.0)


def tiny(labels):
    return Dataset(source="t", features=["a"], X=np.arange(len(labels), dtype=float)[:, None], y=np.array(labels))


def test_one_class_is_refused():
    with pytest.raises(DataError, match="only one class"):
        prepare(tiny(["x"] * 20), seed=0, val_fraction=0.15, test_fraction=0.15)


def test_class_too_small_to_stratify_is_named():
    with pytest.raises(DataError, match=r"too few rows to stratify: classes \{'rare': 2\}.*at least 7"):
        prepare(tiny(["x"] * 20 + ["rare"] * 2), seed=0, val_fraction=0.15, test_fraction=0.15)


def test_integer_labels_become_strings_in_numeric_order():
    prepared = prepare(tiny([10] * 10 + [2] * 10), seed=0, val_fraction=0.15, test_fraction=0.15)
    assert prepared.classes == ["2", "10"]
