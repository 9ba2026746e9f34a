"""training/step.py's gradients are autograd's, bit for bit."""

import pytest
import torch
from torch import nn

from training import step
from training.model import ACTIVATIONS, MLP


def hand_masks(model: MLP, rows: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for dropout, width in model.dropouts():
        dropout.mask = torch.empty(rows, width).bernoulli_(1 - dropout.p, generator=generator).div_(1 - dropout.p)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(("dropout", "weighted"), [(0.0, False), (0.2, True)])
def test_gradients_and_loss_are_autograds(activation, dropout, weighted):
    torch.manual_seed(0)
    model = MLP(5, (32, 16), 3, activation, dropout)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    weight = torch.tensor([0.5, 1.0, 2.0]) if weighted else None

    hand_masks(model, 40, seed=1)
    loss = nn.CrossEntropyLoss(weight=weight)(model(x), y)
    loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    hand_masks(model, 40, seed=1)
    assert torch.equal(step.gradients(model, x, y, weight), loss.detach())
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, expected[name]), name
    assert all(dropout.mask is None for dropout, _ in model.dropouts())


def test_a_dropout_layer_without_its_mask_is_refused():
    model = MLP(5, (8,), 2, dropout=0.5)
    with pytest.raises(RuntimeError, match="no mask"):
        step.gradients(model, torch.randn(4, 5), torch.zeros(4, dtype=torch.long), None)


def test_a_layer_without_a_written_backward_is_refused():
    model = MLP(5, (8,), 2)
    model.layers[1] = nn.Softplus()
    with pytest.raises(TypeError, match="no backward pass written for Softplus"):
        step.gradients(model, torch.randn(4, 5), torch.zeros(4, dtype=torch.long), None)
