"""The training loop, top to bottom: mini-batches, validation, LR schedule, early stopping, checkpoints.

Reproducibility is part of the contract: on CPU the same config and data give the same weights, and a
run interrupted at any point and resumed from `last.pt` ends exactly where an uninterrupted run ends.
That works because every source of randomness (initialization, shuffling, dropout) comes from torch
RNGs whose states are saved in each checkpoint at an epoch boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from tqdm import tqdm

from training import checkpoint
from training.config import TrainConfig
from training.data import Dataset
from training.errors import ConfigError, ResumeError
from training.model import MLP
from training.preprocess import Prepared


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@dataclass
class TrainState:
    """What changes from epoch to epoch besides the weights; saved in every checkpoint."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False


class Trainer:
    def __init__(self, config: TrainConfig, data: Prepared, dataset: Dataset, workdir: Path, progress: bool = True):
        self.config, self.data, self.workdir, self.progress = config, data, Path(workdir), progress
        self.dataset_info = {"source": dataset.source, "fingerprint": dataset.fingerprint(), "rows": len(dataset.y)}
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = MLP.from_config(len(data.features), len(data.classes), config.model).to(self.device)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=config.lr_factor, patience=config.lr_patience
        )
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.loss_fn = nn.CrossEntropyLoss(weight=self._class_weights())
        self.X_train, self.y_train = self._tensors(data.train.X, data.train.y)
        self.X_val, self.y_val = self._tensors(data.val.X, data.val.y)
        self.state = TrainState()

    def _optimizer(self) -> torch.optim.Optimizer:
        c, params = self.config, self.model.parameters()
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        optimizer = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return optimizer(params, lr=c.lr, weight_decay=c.weight_decay)

    def _class_weights(self) -> torch.Tensor | None:
        if self.config.class_weights == "none":
            return None
        classes = np.arange(len(self.data.classes))
        weights = compute_class_weight("balanced", classes=classes, y=self.data.train.y)
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _tensors(self, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = self.data.scaler.transform(X).astype(np.float32)
        return torch.from_numpy(scaled).to(self.device), torch.from_numpy(y).to(self.device)

    # --- checkpoints -------------------------------------------------------------------------------

    def _payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": vars(self.state).copy(),
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()},
            "config": self.config.model_dump(mode="json"),
            "features": self.data.features,
            "classes": self.data.classes,
            "scaler": {"mean": self.data.scaler.mean_.tolist(), "scale": self.data.scaler.scale_.tolist()},
            "dataset": self.dataset_info,
        }

    def resume(self, path: Path) -> None:
        saved = checkpoint.load(path)
        if saved["dataset"]["fingerprint"] != self.dataset_info["fingerprint"]:
            raise ResumeError(f"{path}: was trained on different data than {self.dataset_info['source']!r}")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState(**saved["state"])
        torch.set_rng_state(saved["rng"]["torch"])
        self.shuffle.set_state(saved["rng"]["shuffle"])

    # --- the loop ----------------------------------------------------------------------------------

    def _train_epoch(self) -> float:
        self.model.train()
        order = torch.randperm(len(self.y_train), generator=self.shuffle).to(self.device)
        total = 0.0
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            loss = self.loss_fn(self.model(self.X_train[batch]), self.y_train[batch])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(batch)
        return total / len(order)

    @torch.no_grad()
    def _validate(self) -> tuple[float, float]:
        self.model.eval()
        logits = self.model(self.X_val)
        loss = self.loss_fn(logits, self.y_val).item()
        accuracy = (logits.argmax(dim=1) == self.y_val).float().mean().item()
        return loss, accuracy

    def fit(self) -> TrainState:
        """Train until early stopping or max epochs; leaves the best weights in `self.model`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        c, s = self.config, self.state
        bar = tqdm(
            total=c.max_epochs, initial=s.epoch, desc=c.name, unit="epoch", disable=not self.progress, leave=True
        )
        while not s.finished and s.epoch < c.max_epochs:
            train_loss = self._train_epoch()
            val_loss, val_accuracy = self._validate()
            self.scheduler.step(val_loss)
            s.epoch += 1
            lr = self.optimizer.param_groups[0]["lr"]
            s.history.append(
                {
                    "epoch": s.epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_accuracy": val_accuracy,
                    "lr": lr,
                }
            )
            if val_loss < s.best_val_loss:
                s.best_val_loss, s.best_epoch = val_loss, s.epoch
            s.finished = s.epoch - s.best_epoch >= c.patience or s.epoch >= c.max_epochs
            if s.best_epoch == s.epoch:
                checkpoint.save(self.workdir / checkpoint.BEST, self._payload())
            checkpoint.save(self.workdir / checkpoint.LAST, self._payload())
            bar.update(1)
            bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", val_acc=f"{val_accuracy:.3f}")
        bar.close()
        best = checkpoint.load(self.workdir / checkpoint.BEST)
        self.model.load_state_dict(best["model"])
        return s

    def best_checkpoint(self) -> dict[str, Any]:
        return checkpoint.load(self.workdir / checkpoint.BEST)
