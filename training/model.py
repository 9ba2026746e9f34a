"""The network: an MLP returning logits, and the serving graph around it (standardize → MLP → / T → softmax)."""

from __future__ import annotations

import torch
from torch import nn

from training.config import ModelConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


class MLP(nn.Module):
    """Fully connected layers with one activation (and optional dropout) between them; outputs logits."""

    def __init__(
        self,
        n_features: int,
        hidden: tuple[int, ...],
        n_classes: int,
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "kaiming",
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*layers)
        self._init_weights(init, activation)

    @classmethod
    def from_config(cls, n_features: int, n_classes: int, config: ModelConfig) -> MLP:
        return cls(n_features, config.hidden, n_classes, config.activation, config.dropout, config.init)

    def _init_weights(self, init: str, activation: str) -> None:
        if init == "default":
            return
        gain_name = {"leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid"}.get(activation, "relu")
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                if init == "kaiming":
                    nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
                    nn.init.kaiming_uniform_(layer.weight, nonlinearity=nonlinearity)
                else:
                    nn.init.xavier_uniform_(layer.weight, gain=nn.init.calculate_gain(gain_name))
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def dropouts(self) -> list[tuple[nn.Dropout, int]]:
        """Each dropout layer, in forward order, with the width of what it drops (the layer before's outputs)."""
        found, width = [], 0
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                width = layer.out_features
            elif isinstance(layer, nn.Dropout):
                found.append((layer, width))
        return found


class Classifier(nn.Module):
    """What gets exported and served: raw features in, class probabilities out.

    Standardization lives inside the graph so a client sends features as they are, and a server can
    never pair a model with the wrong scaler. The calibration temperature (`training/calibrate.py`) lives
    here for the same reason: every graph exported from this module divides the logits by it.
    """

    def __init__(self, mlp: MLP, mean: torch.Tensor, scale: torch.Tensor, temperature: float = 1.0):
        super().__init__()
        self.mlp = mlp
        self.register_buffer("mean", mean.to(torch.float32))
        self.register_buffer("scale", scale.to(torch.float32))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.set_temperature(temperature)

    def set_temperature(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature.fill_(float(temperature))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits of raw features (what temperature scaling is fitted on)."""
        return self.mlp((features - self.mean) / self.scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features) / self.temperature, dim=-1)
