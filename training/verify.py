"""`python -m training verify <repository>/<name>/<version>`: re-check a published version end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bundle.integrity import BundleError, check_bundle
from bundle.manifest import Manifest
from bundle.repository import CHECKPOINT_FILE, EXPLAIN_FILE, MODEL_FILE
from training import checkpoint, explain, export
from training.errors import ParityError, ResumeError

PROBE_ROWS = 512


def probe_rows(manifest: Manifest, rows: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Inputs spread around the training distribution (mean ± 3 std), since the test split is not stored."""
    rng = np.random.default_rng(seed)
    mean = np.asarray(manifest.scaler.mean)
    scale = np.asarray(manifest.scaler.scale)
    return (mean + rng.uniform(-3, 3, size=(rows, manifest.n_features)) * scale).astype(np.float32)


def verify(folder: Path) -> tuple[Manifest, float]:
    """Hashes, graphs and metadata (as the server checks them), then ONNX vs torch parity from the checkpoint
    (and the explanation graph's against torch autograd, when the version has one).

    Returns the manifest and the largest probability difference; raises `BundleError` on any failure.
    """
    folder = Path(folder)
    manifest = check_bundle(folder)
    try:
        saved = checkpoint.load(folder / CHECKPOINT_FILE)
    except ResumeError as e:
        raise BundleError(str(e)) from None
    if saved["features"] != manifest.features or saved["classes"] != manifest.classes:
        raise BundleError(f"{folder / CHECKPOINT_FILE}: features or classes disagree with the manifest")
    classifier = checkpoint.rebuild_classifier(saved)
    try:
        difference = export.check_classifier_parity(folder / MODEL_FILE, classifier, probe_rows(manifest))
        if manifest.explanation is not None:
            rows = probe_rows(manifest, 64)
            explain.check_explainer_parity(folder / EXPLAIN_FILE, classifier, rows, manifest.explanation.steps)
    except ParityError as e:
        raise BundleError(f"{folder}: {e}") from None
    return manifest, difference
