import json

import pytest
from pydantic import ValidationError

from bundle.manifest import Manifest


def test_round_trip_through_the_file_is_lossless(trained, tmp_path):
    _, manifest, _ = trained
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest
    assert json.loads((tmp_path / "manifest.json").read_text())["schema_version"] == 1


def test_manifest_carries_what_serving_needs(trained):
    _, manifest, _ = trained
    assert manifest.features == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    assert manifest.classes == ["setosa", "versicolor", "virginica"]
    assert [(t.name, t.datatype, t.shape) for t in manifest.inputs] == [("features", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, t.shape) for t in manifest.outputs] == [("probabilities", "FP32", [-1, 3])]
    assert set(manifest.files) == {
        "model.onnx", "scaler.onnx", "label_encoder.onnx", "explain.onnx", "report.json", "curves.png",
        "confusion_matrix.png", "reliability.png", "checkpoint.pt",
    }  # fmt: skip
    assert {"accuracy", "log_loss", "macro_f1", "weighted_f1", "ece", "brier"} <= set(manifest.metrics)
    assert manifest.dataset.split == {"train": 104, "val": 23, "test": 23}
    assert {"torch", "onnxruntime", "scikit-learn"} <= set(manifest.libraries)
    assert manifest.training["seed"] == 0


def test_a_manifest_from_before_explanations_still_reads_and_verifies(trained, tmp_path):
    """Versions published before explanations have no `explanation` and no explain.onnx, and still verify."""
    from bundle.integrity import check_bundle
    from tests.serving import republish

    legacy = check_bundle(republish(trained[0], tmp_path, "iris", before_explanations=True))
    assert legacy.explanation is None and "explain.onnx" not in legacy.files


def changed(manifest, **fields):
    return {**json.loads(manifest.model_dump_json()), **fields}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"features": ["a", "a", "b", "c"]}, "duplicate entries"),
        ({"classes": ["x\ny", "b", "c"]}, "line breaks"),
        ({"version": 0}, "greater than or equal to 1"),
        ({"name": "../evil"}, "pattern"),
        ({"surprise": 1}, "Extra inputs"),
        ({"features": ["a", "b"]}, "scaler has 4 means for 2 features"),
        ({"schema_version": 2}, "schema_version"),
    ],
)
def test_invalid_manifests_are_rejected_naming_the_field(trained, fields, message):
    _, manifest, _ = trained
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(changed(manifest, **fields))
