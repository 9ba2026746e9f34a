"""`make quality`: our trainer vs scikit-learn's MLPClassifier on every built-in dataset, same split and sizes.

The seed tutorials' accuracies are the floor; scikit-learn with the same hidden sizes is the bar to meet.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neural_network import MLPClassifier

from bundle.repository import REPORT_FILE
from training import data, pipeline
from training.config import TrainConfig
from training.preprocess import prepare

FLOORS = {"spiral": 0.97, "digits": 0.97, "iris": 0.93}
"""Accuracy floors from the seed tutorials; the other datasets are held to scikit-learn's score."""


def scikit_learn_baseline(name: str, config: TrainConfig) -> dict[str, float]:
    dataset = data.load(name)
    prepared = prepare(dataset, config.seed, config.val_fraction, config.test_fraction)
    started = time.perf_counter()
    classifier = MLPClassifier(hidden_layer_sizes=config.model.hidden, max_iter=2000, random_state=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(prepared.scaler.transform(prepared.train.X), prepared.train.y)
    seconds = time.perf_counter() - started
    predicted = classifier.predict(prepared.scaler.transform(prepared.test.X))
    return {
        "accuracy": accuracy_score(prepared.test.y, predicted),
        "macro_f1": f1_score(prepared.test.y, predicted, average="macro"),
        "seconds": seconds,
    }


def ours(name: str, config: TrainConfig) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder, manifest = pipeline.train(config, Path(tmp) / "models", Path(tmp) / "run", progress=False)
        report = json.loads((folder / REPORT_FILE).read_text())
    return {
        "accuracy": manifest.metrics["accuracy"],
        "macro_f1": manifest.metrics["macro_f1"],
        "seconds": report["training_seconds"],
    }


def main(seed: int = 0, datasets: list[str] | None = None) -> int:
    names = datasets or list(data.BUILTIN)
    header = f"{'dataset':<14}{'ours acc':>9}{'sk acc':>8}{'ours F1':>9}{'sk F1':>8}{'ours s':>8}{'sk s':>7}  verdict"
    print(header)
    print("-" * len(header))
    failures = 0
    for name in names:
        config = TrainConfig(name=name, dataset=name, seed=seed)
        a, b = ours(name, config), scikit_learn_baseline(name, config)
        floor = FLOORS.get(name, 0.0)
        ok = a["accuracy"] >= b["accuracy"] - 0.01 and a["accuracy"] >= floor
        failures += not ok
        verdict = "ok" if ok else f"BELOW (needs ≥ {max(b['accuracy'] - 0.01, floor):.3f})"
        print(
            f"{name:<14}{a['accuracy']:>9.4f}{b['accuracy']:>8.4f}{a['macro_f1']:>9.4f}{b['macro_f1']:>8.4f}"
            f"{a['seconds']:>8.1f}{b['seconds']:>7.1f}  {verdict}",
            flush=True,
        )
    return 1 if failures else 0
