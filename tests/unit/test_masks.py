"""Dropout masks drawn ahead on a helper thread are exactly the ones `nn.Dropout` draws, and leave the global
generator where it would be (a whole fit with them: tests/unit/test_trainer.py)."""

import threading

import pytest
import torch
from torch import nn

from training import masks
from training.model import MLP


def nn_dropout_masks(model: MLP, epoch_batches: list[int], epochs: int):
    """What `nn.Dropout` draws from the global generator, per batch, and the generator's state per epoch."""
    batches, states = [], []
    for _ in range(epochs):
        for rows in epoch_batches:
            ones = {dropout: torch.ones(rows, width) for dropout, width in model.dropouts()}
            batches.append([nn.functional.dropout(x, dropout.p, training=True) for dropout, x in ones.items()])
        states.append(torch.get_rng_state())
    return batches, states


@pytest.mark.parametrize(
    ("epoch_batches", "chunk_draws"),
    [
        ([32, 32, 7], masks.CHUNK_DRAWS),  # several epochs a chunk
        ([32, 32, 7], 71 * 24),  # one epoch a chunk
        ([32, 32, 7], 40 * 24),  # pieces of epochs: one batch a chunk
        ([32, 32, 32, 7], 64 * 24),  # pieces of two batches
    ],
)
def test_the_masks_and_generator_states_are_nn_dropouts(monkeypatch, epoch_batches, chunk_draws):
    monkeypatch.setattr(masks, "CHUNK_DRAWS", chunk_draws)
    model = MLP(3, (16, 8), 2, "tanh", dropout=0.3)
    torch.manual_seed(7)
    expected, expected_states = nn_dropout_masks(model, epoch_batches, epochs=5)
    torch.manual_seed(7)
    got, states = [], []
    with masks.DropoutMasks(model, epoch_batches) as drawer:
        for _ in range(5):
            for _ in epoch_batches:
                got.append(drawer.next_batch())
            drawer.end_epoch()
            states.append(torch.get_rng_state())
    for batch, (want, have) in enumerate(zip(expected, got, strict=True)):
        for layer, (w, h) in enumerate(zip(want, have, strict=True)):
            assert torch.equal(w, h), (batch, layer)
    assert all(torch.equal(a, b) for a, b in zip(expected_states, states, strict=True))


def test_an_epoch_cannot_end_before_its_last_batch():
    model = MLP(3, (16,), 2, dropout=0.5)
    with masks.DropoutMasks(model, [4, 4]) as drawer:
        drawer.next_batch()
        with pytest.raises(RuntimeError, match="before its last batch"):
            drawer.end_epoch()


def test_one_dropout_rate_only():
    model = MLP(3, (16, 8), 2, dropout=0.5)
    model.dropouts()[1][0].p = 0.2
    with pytest.raises(ValueError, match="one dropout rate"):
        masks.DropoutMasks(model, [4])


def test_the_helper_thread_ends_with_the_block_even_when_it_raises():
    model = MLP(3, (16,), 2, dropout=0.5)

    def helpers():
        return [t for t in threading.enumerate() if t.name.startswith("dropout-masks")]

    with masks.DropoutMasks(model, [4, 4]) as drawer:
        drawer.next_batch()
        drawer.next_batch()
        assert helpers()  # drawing the next chunk, or waiting for work
    assert not helpers()
    with pytest.raises(KeyboardInterrupt), masks.DropoutMasks(model, [4, 4]) as drawer:
        drawer.next_batch()
        raise KeyboardInterrupt  # Ctrl-C mid-epoch
    assert not helpers()
