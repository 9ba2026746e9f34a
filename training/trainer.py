"""The training loop, top to bottom: mini-batches, validation, LR schedule, early stopping, checkpoints.

Reproducibility is part of the contract: on CPU the same config and data give the same weights, and a
run interrupted at any point and resumed from `last.pt` ends exactly where an uninterrupted run ends.
That works because every source of randomness (initialization, shuffling, dropout) comes from torch
RNGs whose states are saved in each checkpoint at an epoch boundary.

Speed: these networks and batches are tiny, so a step costs overhead, not arithmetic. Profiled on digits and
circles, the time went to OpenMP threads fighting over two cores, to NaN-filling every new tensor (a
debugging aid of deterministic mode, 30-40 % of a step), to Python per optimizer call and per `.item()`, and
to an fsync'd checkpoint every epoch; and the defaults took 40 steps an epoch for up to 130 epochs. Hence: one
intra-op thread while training on CPU, no NaN filling, fused optimizers, one `.item()` per epoch, batches of
256 at lr 1e-2 with shorter patience (as accurate on every built-in, a tenth of the steps), and checkpoints
written at most every `CHECKPOINT_INTERVAL_S` seconds and after the last epoch. Resume stays exact: every
checkpoint is taken at an epoch boundary, and a new best is held in memory until the next write. Then, profiled
again on circles: dropout masks were a fifth of a step, now drawn on a helper thread (`training/masks.py`);
autograd's bookkeeping and `Adam.step`'s re-listing of its tensors were the largest overheads left, now a written-out
backward pass (`training/step.py`) and a listed step (`training/adam.py`). All three give the same bits as before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from tqdm import tqdm

from training import adam, checkpoint, masks, step
from training.config import TrainConfig
from training.data import Dataset
from training.errors import ConfigError, ResumeError
from training.model import MLP
from training.preprocess import Prepared

CHECKPOINT_INTERVAL_S = 1.0
"""At most this much work (in seconds) is lost to a Ctrl-C or a crash; writing `last.pt` (fsync'd) every
epoch cost more than the epochs themselves on small datasets."""


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on CPU: ops on batches this small gain nothing from threads, and with another
    busy process on the cores they lost up to 10x waiting for each other (measured on digits)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _copy(value: Any) -> Any:
    """A copy of a checkpoint payload that later steps cannot change (a few times cheaper than `copy.deepcopy`,
    which goes through every tensor's `__deepcopy__`)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


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
        # ...without its debugging aid of filling every new tensor with NaN: our kernels never read memory they
        # did not write, and the filling was 30-40 % of a CPU step here (same weights either way).
        torch.utils.deterministic.fill_uninitialized_memory = False
        self.model = MLP.from_config(len(data.features), len(data.classes), config.model).to(self.device)
        self.optimizer = self._optimizer()
        self._optimizer_step = adam.ListedStep(self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=config.lr_factor, patience=config.lr_patience
        )
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.loss_fn = nn.CrossEntropyLoss(weight=self._class_weights())
        self.X_train, self.y_train = self._tensors(data.train.X, data.train.y)
        self.X_val, self.y_val = self._tensors(data.val.X, data.val.y)
        self.state = TrainState()
        self._best: dict[str, Any] | None = None  # the newest best checkpoint, kept in memory
        self._best_unsaved = False
        self._saved_at = time.monotonic()
        # On CPU gradients come from `training/step.py`, with dropout masks drawn ahead (`training/masks.py`): the
        # same bits as autograd's, in less time. On CUDA, autograd: dropout's fused kernel keeps its masks to itself.
        self.autograd = self.device.type != "cpu"
        self._masks: masks.DropoutMasks | None = None  # while fitting without autograd, with dropout

    def _optimizer(self) -> torch.optim.Optimizer:
        c, params = self.config, self.model.parameters()
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, fused=True)
        optimizer = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return optimizer(params, lr=c.lr, weight_decay=c.weight_decay, fused=True)

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
        self._optimizer_step = adam.ListedStep(self.optimizer)  # lists the loaded state's tensors
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState(**saved["state"])
        torch.set_rng_state(saved["rng"]["torch"])
        self.shuffle.set_state(saved["rng"]["shuffle"])

    # --- the loop ----------------------------------------------------------------------------------

    def _set_training(self, training: bool) -> None:
        """Train mode for autograd's steps (dropout on), eval mode for validation. `step.gradients` applies its
        masks whatever the mode, so without autograd the model stays in eval mode: `Module.train` walks every
        module through `__setattr__`, twice an epoch, about 8 % of a circles epoch."""
        training = training and self.autograd
        if self.model.training != training:
            self.model.train(training)

    def _train_epoch(self) -> float:
        self._set_training(True)
        order = torch.randperm(len(self.y_train), generator=self.shuffle).to(self.device)
        losses, sizes = [], []
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            losses.append(self._gradients(self.X_train[batch], self.y_train[batch]))
            self._optimizer_step()
            sizes.append(len(batch))
        if self._masks:
            self._masks.end_epoch()
        weights = torch.tensor(sizes, dtype=torch.float32, device=self.device)
        return (torch.stack(losses) @ weights).item() / len(order)  # one sync per epoch, not one per step

    def _gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Set the parameters' gradients for one batch and return its loss."""
        if self.autograd:
            loss = self.loss_fn(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return loss.detach()
        masks = self._masks.next_batch() if self._masks else []
        return step.gradients(self.model, x, y, self.loss_fn.weight, masks)

    @torch.no_grad()
    def _validate(self) -> tuple[float, float]:
        self._set_training(False)
        logits = self.model(self.X_val)
        loss = self.loss_fn(logits, self.y_val).item()
        accuracy = (logits.argmax(dim=1) == self.y_val).float().mean().item()
        return loss, accuracy

    def _checkpoint(self, new_best: bool, final: bool) -> None:
        """Remember a new best in memory; write `best.pt` (if it changed) then `last.pt` when one is due.

        On disk `best.pt` is always the best up to the epoch of `last.pt`, so `--resume` from them is exact.
        """
        if new_best:
            payload = self._payload()
            state = {**payload.pop("state"), "history": list(self.state.history)}  # entries never change
            self._best, self._best_unsaved = {**_copy(payload), "state": state}, True
        if not final and time.monotonic() - self._saved_at < CHECKPOINT_INTERVAL_S:
            return
        if self._best_unsaved:
            checkpoint.save(self.workdir / checkpoint.BEST, self._best)
            self._best_unsaved = False
        checkpoint.save(self.workdir / checkpoint.LAST, self._payload())
        self._saved_at = time.monotonic()

    def fit(self) -> TrainState:
        """Train until early stopping or max epochs; leaves the best weights in `self.model`."""
        with one_thread(self.device), self._dropout_masks():
            return self._fit()

    @contextmanager
    def _dropout_masks(self) -> Iterator[None]:
        """Dropout masks drawn ahead on a second core (`training/masks.py`) for `step.gradients`."""
        if self.autograd or not self.model.dropouts():
            yield
            return
        n, size = len(self.y_train), self.config.batch_size
        with masks.DropoutMasks(self.model, [min(size, n - start) for start in range(0, n, size)]) as self._masks:
            try:
                yield
            finally:
                self._masks = None

    def _fit(self) -> TrainState:
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
            if val_loss < s.best_val_loss * (1 - c.min_delta):
                s.best_val_loss, s.best_epoch = val_loss, s.epoch
            s.finished = s.epoch - s.best_epoch >= c.patience or s.epoch >= c.max_epochs
            self._checkpoint(new_best=s.best_epoch == s.epoch, final=s.finished)
            bar.update(1)
            bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", val_acc=f"{val_accuracy:.3f}")
        bar.close()
        self.model.load_state_dict(self.best_checkpoint()["model"])
        return s

    def best_checkpoint(self) -> dict[str, Any]:
        """What `best.pt` holds (from memory when this process found it)."""
        return self._best if self._best is not None else checkpoint.load(self.workdir / checkpoint.BEST)
