"""Calibration: the metrics on hand-made numbers, the temperature fit on logits of known miscalibration, the
temperature inside the exported graph (real torch, real ONNX Runtime), and what a bundle records."""

import json

import numpy as np
import pytest
import torch
from scipy.special import softmax

from bundle.manifest import Manifest
from training import calibrate, checkpoint, export
from training.errors import ParityError
from training.evaluate import calibration_scores, expected_calibration_error
from training.model import MLP, Classifier


def test_ece_is_the_row_weighted_gap_between_accuracy_and_confidence_per_bin():
    # bin (13/15, 14/15]: confidences 0.9 and 0.9, one right -> |0.5 - 0.9| = 0.4 over 2 rows
    # bin (14/15, 1]: confidence 0.95, right -> 0.05 over 1 row; bin (7/15, 8/15]: 0.5, right -> 0.5 over 1 row
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.95, 0.05], [0.5, 0.5]])
    y = np.array([0, 0, 0, 0])
    assert expected_calibration_error(probabilities, y) == pytest.approx((2 * 0.4 + 0.05 + 0.5) / 4)
    perfect = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2, 1])) == 0.0


def test_scores_agree_with_their_definitions():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = np.array([0, 1])
    got = calibration_scores(probabilities, y)
    assert got["brier"] == pytest.approx(((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.7**2 + 0.6**2)) / 2)
    assert got["log_loss"] == pytest.approx(-(np.log(0.7) + np.log(0.3)) / 2)


def sampled(n, sharpen, seed=0):
    """Logits `sharpen` times too confident: labels drawn from softmax(true logits), the model says true × sharpen."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 2, size=(n, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(true, axis=1)])
    return true * sharpen, y


def test_an_overconfident_model_gets_its_temperature_back():
    z, y = sampled(4000, sharpen=3.0)
    result = calibrate.fit_temperature(z, y)
    assert result.applied and result.temperature == pytest.approx(3.0, rel=0.1)
    assert result.evidence_z > calibrate.MIN_EVIDENCE_Z
    assert result.validation["fitted"]["ece"] < result.validation["before"]["ece"]


def test_a_validation_split_without_errors_pins_nothing_down_and_keeps_t_1():
    z = np.array([[3.0, 0.0], [0.0, 3.0], [2.0, -1.0]])
    result = calibrate.fit_temperature(z, np.array([0, 1, 0]))
    assert result.temperature == 1.0 and not result.applied
    assert "no minimum" in result.reason and "kept T = 1" in result.reason


def test_a_gain_within_noise_keeps_t_1_and_says_so():
    z, y = sampled(60, sharpen=1.1, seed=3)
    result = calibrate.fit_temperature(z, y)
    assert result.temperature == 1.0 and not result.applied
    assert "kept T = 1" in result.reason


def classifier(temperature=1.0):
    torch.manual_seed(0)
    mlp = MLP(3, (8,), 4, activation="tanh")
    return Classifier(mlp, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 1.0, 0.5]), temperature).eval()


def test_the_classifier_divides_its_logits_by_the_temperature():
    x = torch.randn(6, 3)
    model = classifier(2.5)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.softmax(model.logits(x) / 2.5, dim=1))
    with pytest.raises(ValueError, match="temperature must be positive"):
        model.set_temperature(0.0)


def test_the_exported_graph_carries_the_temperature_and_parity_checks_it(tmp_path):
    X = np.random.default_rng(0).normal(2, 2, size=(64, 3)).astype(np.float32)
    calibrated, plain = classifier(2.5), classifier(1.0)
    path = tmp_path / "model.onnx"
    export.export_classifier(calibrated, 3, {"name": "t"}, path)
    assert export.check_classifier_parity(path, calibrated, X) <= export.PARITY_TOLERANCE
    with pytest.raises(ParityError, match="differ by"):
        export.check_classifier_parity(path, plain, X)  # the same weights without T are another model


def test_a_bundle_records_calibration_and_verify_rebuilds_the_calibrated_graph(trained):
    folder, manifest, _ = trained
    report = json.loads((folder / "report.json").read_text())["calibration"]
    assert report["method"] == "temperature" and report["fitted_on"] == "validation"
    assert set(report["test"]) >= {"before", "after"} and "reason" in report
    assert manifest.calibration.temperature == report["temperature"]
    assert manifest.metrics["ece"] == pytest.approx(report["test"]["after"]["ece"])
    assert "reliability.png" in manifest.files
    saved = checkpoint.load(folder / "checkpoint.pt")
    assert saved["calibration"]["temperature"] == manifest.calibration.temperature
    assert float(checkpoint.rebuild_classifier(saved).temperature) == manifest.calibration.temperature


def test_bundles_from_before_calibration_still_read_and_rebuild_with_t_1(trained):
    folder, manifest, _ = trained
    old = json.loads(manifest.model_dump_json())
    del old["calibration"]
    assert Manifest.model_validate(old).calibration is None
    saved = checkpoint.load(folder / "checkpoint.pt")
    del saved["calibration"]
    assert float(checkpoint.rebuild_classifier(saved).temperature) == 1.0


def test_no_calibrate_publishes_an_uncalibrated_graph_and_says_so(tmp_path):
    from training import pipeline
    from training.config import TrainConfig

    config = TrainConfig(name="iris", dataset="iris", max_epochs=3, calibrate=False)
    folder, manifest = pipeline.train(config, tmp_path / "models", tmp_path / "run", progress=False)
    report = json.loads((folder / "report.json").read_text())["calibration"]
    assert manifest.calibration is None and report["method"] == "none"
    assert report["test"]["before"] == pytest.approx(report["test"]["after"], abs=1e-6)
    assert (folder / "reliability.png").stat().st_size > 0
