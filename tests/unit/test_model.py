import pytest
import torch
from torch import nn

from training.model import MLP, Classifier


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu", "gelu"])
@pytest.mark.parametrize("init", ["kaiming", "xavier", "default"])
def test_mlp_returns_logits_of_the_right_shape(activation, init):
    mlp = MLP(5, (8, 4), 3, activation=activation, init=init)
    assert mlp(torch.randn(7, 5)).shape == (7, 3)
    assert sum(isinstance(m, nn.Linear) for m in mlp.modules()) == 3


def test_dropout_only_when_asked_and_only_in_training():
    assert not any(isinstance(m, nn.Dropout) for m in MLP(5, (8,), 3).modules())
    mlp = MLP(5, (64,), 3, dropout=0.5)
    x = torch.randn(4, 5)
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))
    mlp.train()
    assert not torch.equal(mlp(x), mlp(x))


def test_classifier_standardizes_then_returns_probabilities():
    torch.manual_seed(0)
    mlp = MLP(2, (4,), 3).eval()
    mean, scale = torch.tensor([10.0, -5.0]), torch.tensor([2.0, 0.5])
    classifier = Classifier(mlp, mean, scale).eval()
    x = torch.tensor([[12.0, -4.0], [10.0, -5.0]])
    probabilities = classifier(x)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))
    assert torch.allclose(probabilities, torch.softmax(mlp((x - mean) / scale), dim=1))
