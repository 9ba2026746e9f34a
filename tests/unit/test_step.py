"""training/step.py's gradients are autograd's, bit for bit."""

import pytest
import torch
from torch import nn

from training import step
from training.model import ACTIVATIONS, MLP


def draw_masks(model: MLP, rows: int) -> list[torch.Tensor]:
    """Masks as nn.Dropout draws them from the global generator (ones * noise)."""
    return [nn.functional.dropout(torch.ones(rows, width), d.p, training=True) for d, width in model.dropouts()]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(("dropout", "weighted"), [(0.0, False), (0.2, True)])
def test_gradients_and_loss_are_autograds(activation, dropout, weighted):
    torch.manual_seed(0)
    model = MLP(5, (32, 16), 3, activation, dropout)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    weight = torch.tensor([0.5, 1.0, 2.0]) if weighted else None

    torch.manual_seed(1)
    loss = nn.CrossEntropyLoss(weight=weight)(model.train()(x), y)  # nn.Dropout draws its masks
    loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    torch.manual_seed(1)
    masks = draw_masks(model, 40)  # the same masks
    assert torch.equal(step.gradients(model.eval(), x, y, weight, masks), loss.detach())
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, expected[name]), name


@pytest.mark.parametrize("shapes", [[], [(4, 8)], [(4, 8), (4, 6), (4, 6)], [(3, 8), (4, 6)], [(4, 6), (4, 8)]])
def test_masks_that_do_not_fit_the_dropout_layers_are_refused(shapes):
    model = MLP(5, (8, 6), 2, dropout=0.5)
    with pytest.raises(ValueError, match=r"the batch needs \[\(4, 8\), \(4, 6\)\]"):
        step.gradients(
            model, torch.randn(4, 5), torch.zeros(4, dtype=torch.long), None, [torch.ones(s) for s in shapes]
        )


def test_a_layer_without_a_written_backward_is_refused():
    model = MLP(5, (8,), 2)
    model.layers[1] = nn.Softplus()
    with pytest.raises(TypeError, match="no backward pass written for Softplus"):
        step.gradients(model, torch.randn(4, 5), torch.zeros(4, dtype=torch.long), None, [])
