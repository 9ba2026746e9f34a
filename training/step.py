"""The gradients of a training batch for `training.model.MLP`, without autograd: bit-identical to autograd's.

These batches are tiny, so a step costs overhead more than arithmetic. Once the dropout masks were drawn on a
helper thread (`training/masks.py`), autograd's own work (recording the graph, running its engine, accumulating
and zeroing gradients) was the largest overhead left in a circles step (torch profiler). The backward pass of an
MLP is short to write out: this module runs the forward pass keeping what the backward pass needs, then calls
the ATen kernels autograd's formulas call, on the same operands in the same layouts, so the gradients are the
same bits (`tests/unit/test_step.py` compares them with autograd's for every activation, with and without
dropout and class weights). Used on CPU, where the dropout masks come from `training/masks.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.model import MLP

aten = torch.ops.aten

MEAN = 1
"""`nll_loss`'s reduction argument for `reduction="mean"` (ATen's Reduction::Mean), as `CrossEntropyLoss` passes."""
IGNORE_INDEX = -100
"""`CrossEntropyLoss`'s default `ignore_index`."""


def _activation_backward(layer: nn.Module, grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient through `y = layer(x)`, by the kernel autograd's formula for it calls."""
    if isinstance(layer, nn.Tanh):
        return aten.tanh_backward(grad, y)
    if isinstance(layer, nn.Sigmoid):
        return aten.sigmoid_backward(grad, y)
    if isinstance(layer, nn.ReLU):
        return aten.threshold_backward(grad, y, 0)
    if isinstance(layer, nn.LeakyReLU):
        return aten.leaky_relu_backward(grad, x, layer.negative_slope, False)
    if isinstance(layer, nn.GELU):
        return aten.gelu_backward(grad, x, approximate=layer.approximate)
    raise TypeError(f"no backward pass written for {type(layer).__name__}")


Saved = list[tuple[nn.Module, torch.Tensor, torch.Tensor]]
"""Per layer, in forward order: the layer, its input, and what its backward pass needs (its output, or a dropout
layer's mask)."""


@torch.no_grad()
def gradients(
    model: MLP, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, masks: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Set every parameter's `.grad` to the gradient of the mean (class-weighted) cross-entropy of `model(x)`
    against `y` in training mode, as `loss.backward()` after `zero_grad(set_to_none=True)` would; return the loss.

    `masks` holds each dropout layer's scaled mask, in forward order (`training/masks.py`). The model's own mode
    does not matter, so it can stay in eval mode between validations."""
    logits, saved = _forward(model, x, masks)
    log_p = torch._log_softmax(logits, 1, False)
    loss, total_weight = aten.nll_loss_forward(log_p, y, weight, MEAN, IGNORE_INDEX)
    grad = aten.nll_loss_backward(torch.ones_like(loss), log_p, y, weight, MEAN, IGNORE_INDEX, total_weight)
    _backward(saved, aten._log_softmax_backward_data(grad, log_p, 1, log_p.dtype))
    return loss


def _forward(model: MLP, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Saved]:
    needed = [(len(x), width) for _, width in model.dropouts()]
    if (shapes := [tuple(m.shape) for m in masks]) != needed:
        raise ValueError(f"dropout masks of shapes {shapes}; the batch needs {needed}")
    dropout_masks = iter(masks)
    saved: Saved = []
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            out = kept = torch.addmm(layer.bias, x, layer.weight.t())
        elif isinstance(layer, nn.Dropout):
            kept = next(dropout_masks)
            out = x * kept
        else:
            out = kept = layer.forward(x)  # not __call__: no hooks to run on these stateless modules
        saved.append((layer, x, kept))
        x = out
    return x, saved


def _backward(saved: Saved, grad: torch.Tensor) -> None:
    """From the logits' gradient down, setting each Linear's parameter gradients on the way."""
    for index in range(len(saved) - 1, -1, -1):
        layer, x, kept = saved[index]
        if isinstance(layer, nn.Linear):
            layer.bias.grad = grad.sum(0)
            layer.weight.grad = grad.t().mm(x)
            if index:  # the input's gradient, unless the input is the batch
                grad = grad.mm(layer.weight)
        elif isinstance(layer, nn.Dropout):
            grad = grad * kept
        else:
            grad = _activation_backward(layer, grad, x, kept)
