"""Checkpoints: everything needed to rebuild the model, or continue its training, from one file.

Only tensors and plain Python values go in, so `torch.load(weights_only=True)` can read them: no pickled
objects, no code runs when a checkpoint is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bundle.atomic import write_atomic
from training.config import TrainConfig
from training.errors import ResumeError
from training.model import MLP, Classifier

FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"


def save(path: Path, payload: dict[str, Any]) -> None:
    """Atomic, so a Ctrl-C during the write leaves the previous checkpoint intact."""
    write_atomic(Path(path), lambda tmp: torch.save({"format": FORMAT, **payload}, tmp))


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"{path}: no checkpoint to resume from")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise ResumeError(f"{path}: not a readable checkpoint: {e}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ResumeError(f"{path}: not a tabserve checkpoint (format {FORMAT})")
    return checkpoint


def rebuild_classifier(checkpoint: dict[str, Any]) -> Classifier:
    """The exported graph (standardize → MLP → / T → softmax) rebuilt from a checkpoint alone.

    A bundle's checkpoint carries the calibration temperature; training checkpoints and bundles from before
    calibration have none (T = 1).
    """
    config = TrainConfig.model_validate(checkpoint["config"])
    mlp = MLP.from_config(len(checkpoint["features"]), len(checkpoint["classes"]), config.model)
    mlp.load_state_dict(checkpoint["model"])
    scaler = checkpoint["scaler"]
    temperature = checkpoint.get("calibration", {}).get("temperature", 1.0)
    classifier = Classifier(mlp, torch.tensor(scaler["mean"]), torch.tensor(scaler["scale"]), temperature)
    return classifier.eval()
