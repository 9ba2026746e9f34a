"""One training run from data to a published, verified version: load → split → fit → evaluate → export → publish."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import scipy.special

from bundle import repository
from bundle.atomic import sha256_file
from bundle.integrity import onnx_metadata
from bundle.manifest import (
    MANIFEST_FILE,
    Calibration,
    DatasetInfo,
    Explanation,
    Manifest,
    Probe,
    ScalerParams,
    TensorSpec,
)
from training import calibrate, checkpoint, data, evaluate, explain, export
from training.config import TrainConfig
from training.errors import ResumeError
from training.model import Classifier
from training.preprocess import Prepared, prepare
from training.trainer import Trainer

CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
RELIABILITY_FILE = "reliability.png"
PROBE_ROWS = 8
LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "scikit-learn", "skl2onnx", "numpy")


def default_workdir(name: str) -> Path:
    """Where a run's `last.pt` / `best.pt` live while it trains (and where `--resume` looks)."""
    return Path("runs") / name


def resume_config(workdir: Path, name: str) -> TrainConfig:
    saved = checkpoint.load(Path(workdir) / checkpoint.LAST)
    config = TrainConfig.model_validate(saved["config"])
    if config.name != name:
        raise ResumeError(f"{workdir}: holds a run of {config.name!r}, not {name!r}")
    return config


@dataclass
class Fitted:
    """A trained run, ready to export: what `write_bundle` needs besides the version number."""

    config: TrainConfig
    dataset: data.Dataset
    prepared: Prepared
    classifier: Classifier
    state: object
    workdir: Path
    training_seconds: float
    calibration: calibrate.Temperature | None = None


def fit(
    config: TrainConfig, workdir: Path, resume: bool = False, progress: bool = True, dataset: data.Dataset | None = None
) -> Fitted:
    """Load (unless given) and split the data, train (continuing from `workdir/last.pt` if `resume`), then fit
    the calibration temperature on the validation split (unless `config.calibrate` is off)."""
    dataset = dataset or data.load(config.dataset, config.label_column, config.features)
    prepared = prepare(dataset, config.seed, config.val_fraction, config.test_fraction)
    started = time.perf_counter()  # training time: from the split data to a calibrated model
    trainer = Trainer(config, prepared, dataset, workdir, progress=progress)
    if resume:
        trainer.resume(Path(workdir) / checkpoint.LAST)
    state = trainer.fit()
    classifier = checkpoint.rebuild_classifier(trainer.best_checkpoint())
    calibration = calibrate.calibrate(classifier, prepared.val) if config.calibrate else None
    seconds = time.perf_counter() - started
    return Fitted(config, dataset, prepared, classifier, state, Path(workdir), seconds, calibration)


Review = Callable[[Path], dict]
"""Called with the exported `model.onnx` before anything else is written; returns extra report fields, or
raises to publish nothing (a retrain's gate)."""


def publish(fitted: Fitted, repo: Path, review: Review | None = None) -> tuple[Path, Manifest]:
    """Export and publish `fitted` as the next version of its model."""

    def build(staging: Path, version: int) -> Manifest:
        return write_bundle(staging, version, fitted, review)

    folder = repository.publish(repo, fitted.config.name, build)
    return folder, Manifest.read(folder)


def train(
    config: TrainConfig, repo: Path, workdir: Path, resume: bool = False, progress: bool = True
) -> tuple[Path, Manifest]:
    """Train per `config` (continuing from `workdir/last.pt` if `resume`) and publish the next version."""
    return publish(fit(config, workdir, resume, progress), repo)


def write_bundle(staging: Path, version: int, fitted: Fitted, review: Review | None = None) -> Manifest:
    """Every file of a version, the manifest last (it hashes the others)."""
    prepared = fitted.prepared
    identity = {
        "name": fitted.config.name,
        "version": version,
        "features": prepared.features,
        "classes": prepared.classes,
    }
    graphs = _write_graphs(staging, fitted, onnx_metadata(**identity), review)
    probabilities = onnx_probabilities(staging / repository.MODEL_FILE, prepared.test.X)
    metrics = evaluate.evaluate(probabilities, prepared.test.y, prepared.classes)
    evaluate.plot_curves(fitted.state.history, fitted.state.best_epoch, staging / CURVES_FILE)
    evaluate.plot_confusion_matrix(metrics, staging / CONFUSION_FILE)
    calibration = calibration_report(fitted, probabilities, staging / RELIABILITY_FILE)
    _write_report(staging / repository.REPORT_FILE, version, fitted, metrics, calibration, graphs)
    probe = Probe(inputs=prepared.test.X[:PROBE_ROWS].tolist(), probabilities=probabilities[:PROBE_ROWS].tolist())
    manifest = _manifest(staging, identity, fitted, metrics, probe, graphs)
    manifest.write(staging)
    return manifest


@dataclass
class Graphs:
    """What writing a version's graphs found out, for its report and manifest."""

    parity: float
    """Largest |ONNX Runtime - torch| probability on the test split."""
    reviewed: dict
    """The review's extra report fields (a retrain's gate)."""
    explanation: Explanation
    temperature: float


def _write_graphs(staging: Path, fitted: Fitted, metadata: dict[str, str], review: Review | None) -> Graphs:
    """model.onnx (checked against torch, then reviewed), explain.onnx, the scaler and label graphs, and the
    checkpoint they were exported from."""
    prepared, classifier = fitted.prepared, fitted.classifier
    n_features = len(prepared.features)
    model_path = staging / repository.MODEL_FILE
    export.export_classifier(classifier, n_features, metadata, model_path)
    parity = export.check_classifier_parity(model_path, classifier, prepared.test.X)
    reviewed = review(model_path) if review else {}
    held_out = np.concatenate([prepared.val.X, prepared.test.X])
    explanation = explain.write_explainer(
        classifier, held_out, prepared.test.X[:PROBE_ROWS], staging / repository.EXPLAIN_FILE
    )
    export.export_scaler(prepared.scaler, n_features, staging / repository.SCALER_FILE, prepared.test.X)
    export.export_label_decoder(prepared.encoder, prepared.classes, staging / repository.LABEL_ENCODER_FILE)
    temperature = float(classifier.temperature)
    best = checkpoint.load(Path(fitted.workdir) / checkpoint.BEST)  # + the temperature: verify rebuilds this graph
    checkpoint.save(staging / repository.CHECKPOINT_FILE, {**best, "calibration": {"temperature": temperature}})
    return Graphs(parity, reviewed, explanation, temperature)


def _write_report(path: Path, version: int, fitted: Fitted, metrics: dict, calibration: dict, graphs: Graphs) -> None:
    state, config = fitted.state, fitted.config
    report = {
        "model": config.name,
        "version": version,
        "test": metrics,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "history": state.history,
        "parity_max_abs_diff": graphs.parity,
        "calibration": calibration,
        "training_seconds": fitted.training_seconds,
        "config": config.model_dump(mode="json"),
        **graphs.reviewed,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def _manifest(staging: Path, identity: dict, fitted: Fitted, metrics: dict, probe: Probe, graphs: Graphs) -> Manifest:
    """The manifest of the files already in `staging` (it hashes them)."""
    prepared, dataset = fitted.prepared, fitted.dataset
    n_features, n_classes = len(prepared.features), len(prepared.classes)
    return Manifest(
        **identity,
        created_at=datetime.now(UTC),
        class_prior=prepared.class_prior(),
        inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, n_features])],
        outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=[-1, n_classes])],
        scaler=ScalerParams(mean=prepared.scaler.mean_.tolist(), scale=prepared.scaler.scale_.tolist()),
        probe=probe,
        explanation=graphs.explanation,
        metrics=evaluate.headline(metrics),
        calibration=Calibration(temperature=graphs.temperature) if fitted.calibration else None,
        training=fitted.config.model_dump(mode="json"),
        dataset=DatasetInfo(
            source=dataset.source,
            fingerprint=dataset.fingerprint(),
            rows=len(dataset.y),
            split={"train": len(prepared.train), "val": len(prepared.val), "test": len(prepared.test)},
        ),
        files={p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.name != MANIFEST_FILE},
        libraries={"python": platform.python_version(), **{lib: package_version(lib) for lib in LIBRARIES}},
    )


def calibration_report(fitted: Fitted, served: np.ndarray, diagram: Path) -> dict:
    """Test-split calibration before (T = 1), as served (the exported graph) and, when the fitted T was not
    applied, at that T; the reliability diagram shows the first and the one that differs."""
    test, result = fitted.prepared.test, fitted.calibration
    logits = calibrate.logits(fitted.classifier, test.X)
    before = scipy.special.softmax(logits, axis=1)
    curves = {"before (T = 1)": before}
    scores = {"before": before, "after": served}
    if result is not None and result.applied:
        curves[f"after, as served (T = {result.temperature:.3f})"] = served
    elif result is not None:
        scores["fitted"] = scipy.special.softmax(logits / result.fitted, axis=1)
        curves[f"fitted T = {result.fitted:.3f} (not applied)"] = scores["fitted"]
    evaluate.plot_reliability(curves, test.y, diagram)
    return calibrate.report(result, {key: evaluate.calibration_scores(p, test.y) for key, p in scores.items()})


def onnx_probabilities(path: Path, X: np.ndarray) -> np.ndarray:
    session = export.onnx_session(path)
    return session.run(["probabilities"], {"features": np.ascontiguousarray(X, dtype=np.float32)})[0]
