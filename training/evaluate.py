"""Test-split evaluation: the numbers (report.json, manifest metrics) and the pictures (PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
)

ECE_BINS = 15


def _normalized(probabilities: np.ndarray) -> np.ndarray:
    probabilities = probabilities.astype(np.float64)
    return probabilities / probabilities.sum(axis=1, keepdims=True)  # float32 sums are 1 only to ~1e-7


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy − mean confidence| per equal-width confidence bin, weighted by the bin's rows."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bins (0, 1/15], ..., (14/15, 1]
    gap = np.bincount(index, weights=correct - confidence, minlength=bins)  # per bin: rows × (accuracy − confidence)
    return float(np.abs(gap).sum() / len(y_true))


def calibration_scores(probabilities: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """Can a probability be taken at its word: ECE (15 bins, top-label), Brier score (multi-class, 0..2), log-loss."""
    labels = list(range(probabilities.shape[1]))
    probabilities = _normalized(probabilities)
    return {
        "ece": expected_calibration_error(probabilities, y_true),
        "brier": float(brier_score_loss(y_true, probabilities, labels=labels)),
        "log_loss": float(log_loss(y_true, probabilities, labels=labels)),
    }


def evaluate(probabilities: np.ndarray, y_true: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, calibration (ECE, Brier, log-loss), per-class precision/recall/F1/support, macro and weighted
    averages, confusion matrix."""
    indices = list(range(len(classes)))
    probabilities = _normalized(probabilities)
    y_pred = probabilities.argmax(axis=1)
    per_class = classification_report(
        y_true, y_pred, labels=indices, target_names=classes, output_dict=True, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        **calibration_scores(probabilities, y_true),
        "macro_f1": float(f1_score(y_true, y_pred, labels=indices, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=indices, average="weighted", zero_division=0)),
        "rows": len(y_true),
        "per_class": {label: per_class[label] for label in classes},
        "macro_avg": per_class["macro avg"],
        "weighted_avg": per_class["weighted avg"],
        "confusion_matrix": {
            "labels": classes,
            "rows_true_columns_predicted": confusion_matrix(y_true, y_pred, labels=indices).tolist(),
        },
    }


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics that go into the manifest."""
    return {k: metrics[k] for k in ("accuracy", "log_loss", "macro_f1", "weighted_f1", "ece", "brier")}


def plot_curves(history: list[dict[str, float]], best_epoch: int, path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    loss_ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best (epoch {best_epoch})")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], color="tab:green")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy", ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(metrics: dict[str, Any], path: Path) -> None:
    matrix = np.array(metrics["confusion_matrix"]["rows_true_columns_predicted"])
    labels = metrics["confusion_matrix"]["labels"]
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title(f"Test split (accuracy {metrics['accuracy']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(curves: dict[str, np.ndarray], y_true: np.ndarray, path: Path) -> None:
    """Reliability diagram of the top label: accuracy against confidence in 15 equal-width bins, one line per
    set of probabilities (before and after calibration), with how many rows each confidence bin holds."""
    fig, (ax, rows_ax) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for (label, probabilities), marker in zip(curves.items(), "os^", strict=False):
        probabilities = _normalized(probabilities)
        confidence = probabilities.max(axis=1)
        correct = probabilities.argmax(axis=1) == y_true
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=ECE_BINS, strategy="uniform")
        ece = expected_calibration_error(probabilities, y_true)
        ax.plot(mean_confidence, accuracy, marker=marker, label=f"{label}: ECE {ece:.4f}")
        rows_ax.hist(confidence, bins=edges, histtype="step", linewidth=1.5)
    ax.set(ylabel="accuracy", title=f"Reliability on the test split ({len(y_true)} rows, {ECE_BINS} bins)")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper left")
    rows_ax.set(xlabel="confidence (probability of the predicted class)", ylabel="rows", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
