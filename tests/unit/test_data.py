import numpy as np
import pandas as pd
import pytest

from training import data
from training.errors import DataError

EXPECTED_SHAPES = {
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
    "digits": (1797, 64, 10),
    "spiral": (1500, 2, 3),
    "circles": (1000, 2, 2),
    "moons": (1000, 2, 2),
}


@pytest.mark.parametrize("name", list(EXPECTED_SHAPES))
def test_builtin_datasets_have_expected_shape_and_are_fixed(name):
    rows, features, classes = EXPECTED_SHAPES[name]
    dataset = data.load(name)
    assert dataset.X.shape == (rows, features)
    assert len(dataset.features) == features and len(set(dataset.features)) == features
    assert len(np.unique(dataset.y)) == classes
    assert dataset.fingerprint() == data.load(name).fingerprint()  # generators use a fixed seed


def test_spiral_has_500_points_per_class_with_seed_labels():
    labels, counts = np.unique(data.load("spiral").y, return_counts=True)
    assert labels.tolist() == ["c1", "c2", "c3"] and counts.tolist() == [500, 500, 500]


def test_builtin_name_accepts_dashes():
    assert data.load("breast-cancer").source == "breast_cancer"


def write_csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_string_labels(tmp_path):
    path = write_csv(tmp_path, "a,b,species\n1,2,cat\n3,4,dog\n5,6.5,cat\n")
    dataset = data.load(str(path), label_column="species")
    assert dataset.features == ["a", "b"]
    assert dataset.X.tolist() == [[1, 2], [3, 4], [5, 6.5]]
    assert dataset.y.tolist() == ["cat", "dog", "cat"]


def test_integer_labels_stay_integers_so_they_sort_numerically(tmp_path):
    path = write_csv(tmp_path, "a,y\n1,10\n2,2\n3,1.0\n")
    assert data.load(str(path), label_column="y").y.tolist() == [10, 2, 1]


def test_feature_subset_in_given_order(tmp_path):
    path = write_csv(tmp_path, "a,b,c,y\n1,2,3,x\n")
    dataset = data.load(str(path), label_column="y", features=["c", "a"])
    assert dataset.features == ["c", "a"] and dataset.X.tolist() == [[3, 1]]


def test_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"a": [1.0, 2.0], "label": ["x", "y"]}).to_parquet(path)
    dataset = data.load(str(path), label_column="label")
    assert dataset.features == ["a"] and dataset.y.tolist() == ["x", "y"]


@pytest.mark.parametrize(
    ("text", "label", "features", "expected"),
    [
        ("a,b\n1,2\n", "species", None, r"label column 'species' not found; columns are \['a', 'b'\]"),
        ("a,b\n1,2\n", None, None, "--label-column is required"),
        ("a,b,y\n1,2,x\n", "y", ["a", "zz"], r"feature columns \['zz'\] not found"),
        ("a,b,y\n1,oops,x\n2,3,y\n", "y", None, "feature column 'b' must be numeric; 1 row .*'oops'"),
        ("a,b,y\n1,,x\n2,3,y\n4,,x\n", "y", None, r"column 'b' has empty or NaN values in 2 rows \(data row 1, 3\)"),
        ("a,b,y\n1,2,\n", "y", None, "column 'y' has empty or NaN values in 1 row"),
        ("a,b,y\n1,inf,x\n", "y", None, "feature column 'b' has infinite values"),
        ("a,b,y\n", "y", None, "no rows"),
        ("", "y", None, "the file is empty"),
        ("a,y\n1,x\n", "y", ["y"], "is the label column"),
    ],
)
def test_bad_files_fail_with_a_message_naming_the_problem(tmp_path, text, label, features, expected):
    path = write_csv(tmp_path, text)
    with pytest.raises(DataError, match=expected):
        data.load(str(path), label_column=label, features=features)


def test_unknown_source_and_file_type(tmp_path):
    with pytest.raises(DataError, match="neither a built-in dataset"):
        data.load("no-such-thing")
    with pytest.raises(DataError, match=r"unsupported file type \.txt"):
        data.load(str(write_csv(tmp_path, "a,y\n1,2\n", name="data.txt")), label_column="y")
