"""training/adam.py's listed step leaves the same weights and optimizer state as `optimizer.step()`."""

import copy

import pytest
import torch

from training.adam import ListedStep
from training.model import MLP


def train(optimizer_class, listed: bool, steps: int = 6, **settings):
    torch.manual_seed(0)
    model = MLP(4, (16, 8), 3)
    optimizer = optimizer_class(model.parameters(), lr=0.01, **settings)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    step = ListedStep(optimizer) if listed else optimizer.step
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        step()
        scheduler.step()  # the learning rate changes between steps
    return model.state_dict(), optimizer.state_dict()


def assert_same(a, b):
    (weights_a, state_a), (weights_b, state_b) = a, b
    for key, tensor in weights_b.items():
        assert torch.equal(weights_a[key], tensor), key
    for index, state in state_b["state"].items():
        for key, tensor in state.items():
            assert torch.equal(state_a["state"][index][key], tensor), (index, key)
    assert state_a["param_groups"] == state_b["param_groups"]


@pytest.mark.parametrize(
    ("optimizer_class", "settings"),
    [
        (torch.optim.Adam, {"fused": True}),
        (torch.optim.Adam, {"fused": True, "weight_decay": 0.01}),
        (torch.optim.AdamW, {"fused": True, "weight_decay": 0.01}),
        (torch.optim.Adam, {"fused": True, "amsgrad": True}),  # not listed: optimizer.step()
        (torch.optim.SGD, {"momentum": 0.9}),  # not listed: optimizer.step()
    ],
)
def test_the_listed_step_is_optimizer_step(optimizer_class, settings):
    assert_same(train(optimizer_class, listed=True, **settings), train(optimizer_class, listed=False, **settings))


def test_a_state_loaded_after_listing_needs_a_new_listed_step():
    """The lists hold the state's tensors: a step listed before `load_state_dict` would update the old ones."""
    torch.manual_seed(0)
    model = MLP(4, (8,), 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    stale = ListedStep(optimizer)
    stale()
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # new state tensors, same values
    stale()
    assert optimizer.state_dict()["state"][0]["step"].item() == 1  # the optimizer's own state did not move
    fresh = ListedStep(optimizer)
    fresh()
    fresh()
    assert optimizer.state_dict()["state"][0]["step"].item() == 3
