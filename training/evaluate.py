"""Test-split evaluation: the numbers (report.json, manifest metrics) and the pictures (PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
)


def evaluate(probabilities: np.ndarray, y_true: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, log-loss, per-class precision/recall/F1/support, macro and weighted averages, confusion matrix."""
    indices = list(range(len(classes)))
    probabilities = probabilities.astype(np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)  # float32 sums are 1 only to ~1e-7
    y_pred = probabilities.argmax(axis=1)
    per_class = classification_report(
        y_true, y_pred, labels=indices, target_names=classes, output_dict=True, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "log_loss": float(log_loss(y_true, probabilities, labels=indices)),
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
    return {k: metrics[k] for k in ("accuracy", "log_loss", "macro_f1", "weighted_f1")}


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
