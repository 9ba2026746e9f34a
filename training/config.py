"""Every knob of a training run, validated once, stored in the checkpoint and the manifest.

The same `TrainConfig` rebuilds the model from a checkpoint alone and lets a retrain reuse the
champion's recorded settings, so nothing about a run lives only in a command line.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bundle.manifest import MODEL_NAME_PATTERN

Activation = Literal["relu", "tanh", "sigmoid", "leaky_relu", "gelu"]
Init = Literal["kaiming", "xavier", "default"]


class ModelConfig(BaseModel):
    """The architecture: enough, with the feature and class counts, to rebuild the network."""

    model_config = ConfigDict(extra="forbid")

    hidden: tuple[int, ...] = Field((128, 64), description="Hidden layer sizes.")
    activation: Activation = "tanh"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    init: Init = "kaiming"

    @model_validator(mode="after")
    def _positive_layers(self) -> ModelConfig:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be positive integers, got {list(self.hidden)}")
        return self


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    dataset: str = Field(description="Built-in dataset name, or a .csv / .parquet path.")
    label_column: str | None = None
    features: list[str] | None = Field(None, description="Feature columns; default: all but the label.")
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    model: ModelConfig = ModelConfig()
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-2, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="For sgd only.")
    batch_size: int = Field(256, ge=1)
    max_epochs: int = Field(300, ge=1)
    patience: int = Field(15, ge=1, description="Early stopping: epochs without a better val loss.")
    min_delta: float = Field(
        1e-3, ge=0.0, lt=1.0, description="Early stopping: a new best val loss is lower by at least this fraction."
    )
    lr_patience: int = Field(5, ge=1, description="Reduce-LR-on-plateau patience, in epochs.")
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    calibrate: bool = Field(True, description="Fit temperature scaling on the validation split (into model.onnx).")

    @model_validator(mode="after")
    def _splits_leave_training_rows(self) -> TrainConfig:
        if self.val_fraction + self.test_fraction >= 0.6:
            raise ValueError("val_fraction + test_fraction must leave at least 40% of rows for training")
        return self
