import numpy as np
import onnxruntime as ort
import pytest
import torch

from training import checkpoint, data, export
from training.errors import ParityError
from training.preprocess import prepare
from training.verify import probe_rows


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_model_graph_is_one_dynamic_batch_graph_with_metadata(trained):
    folder, manifest, _ = trained
    model = session(folder / "model.onnx")
    (inp,), (out,) = model.get_inputs(), model.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("features", "tensor(float)", 4)
    assert (out.name, out.type, out.shape[1]) == ("probabilities", "tensor(float)", 3)
    assert isinstance(inp.shape[0], str)  # the batch dimension is symbolic
    meta = model.get_modelmeta().custom_metadata_map
    assert (meta["name"], meta["version"]) == ("iris", "1")
    assert meta["labels"] == '["setosa", "versicolor", "virginica"]'
    for rows in (1, 3, 1000):
        probabilities = model.run(None, {"features": probe_rows(manifest, rows)})[0]
        assert probabilities.shape == (rows, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-6)


def test_model_graph_matches_torch_on_the_test_split(trained):
    folder, manifest, _ = trained
    prepared = prepare(data.load("iris"), seed=0, val_fraction=0.15, test_fraction=0.15)
    classifier = checkpoint.rebuild_classifier(checkpoint.load(folder / "checkpoint.pt"))
    assert export.check_classifier_parity(folder / "model.onnx", classifier, prepared.test.X) <= 1e-5
    probabilities = session(folder / "model.onnx").run(None, {"features": prepared.test.X})[0]
    assert (probabilities.argmax(axis=1) == prepared.test.y).mean() == pytest.approx(manifest.metrics["accuracy"])


def test_a_graph_that_disagrees_with_torch_is_refused(trained):
    folder, _, _ = trained
    classifier = checkpoint.rebuild_classifier(checkpoint.load(folder / "checkpoint.pt"))
    with torch.no_grad():
        classifier.mlp.layers[0].bias += 0.5
    with pytest.raises(ParityError, match="differ by"):
        export.check_classifier_parity(folder / "model.onnx", classifier, probe_rows_for(folder))


def probe_rows_for(folder):
    from bundle.manifest import Manifest

    return probe_rows(Manifest.read(folder))


def test_scaler_graph_standardizes_like_the_manifest(trained):
    folder, manifest, _ = trained
    X = probe_rows(manifest, 64)
    got = session(folder / "scaler.onnx").run(None, {"features": X})[0]
    expected = (X - np.array(manifest.scaler.mean)) / np.array(manifest.scaler.scale)
    assert np.allclose(got, expected, atol=1e-5)


def test_label_graph_decodes_indices_to_labels(trained):
    folder, _, _ = trained
    decoder = session(folder / "label_encoder.onnx")
    labels = decoder.run(None, {"index": np.array([2, 0, 1, 0], dtype=np.int64)})[0]
    assert labels.tolist() == ["virginica", "setosa", "versicolor", "setosa"]
    assert decoder.run(None, {"index": np.array([7], dtype=np.int64)})[0].tolist() == [""]


def test_training_publishes_nothing_when_parity_fails(tmp_path, monkeypatch):
    from training import pipeline
    from training.config import TrainConfig

    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # no graph can pass: the publish must be refused
    config = TrainConfig(name="iris", dataset="iris", max_epochs=2)
    with pytest.raises(ParityError, match="ONNX Runtime and torch differ"):
        pipeline.train(config, tmp_path / "models", tmp_path / "run", progress=False)
    assert not [p for p in (tmp_path / "models" / "iris").iterdir() if p.name != ".publish.lock"]
