"""Dropout masks drawn ahead, on a helper thread, while the main thread trains.

On CPU a dropout mask is one draw per element from the Mersenne Twister of torch's global generator: a serial
kernel, about a fifth of a training step on circles (torch profiler). A mask depends on nothing a step
computes, so a helper thread draws the next chunk of batches' masks while the main thread runs the current
chunk; torch releases the GIL inside the draw, so the two run on two cores. A chunk is about `CHUNK_DRAWS` mask
elements: several epochs of a small dataset, or part of an epoch of a large one.

They are exactly the masks `nn.Dropout` would have drawn, in the same order: on CPU it computes
`noise = empty_like(x).bernoulli_(1 - p).div_(1 - p); x * noise`. The thread draws from a copy of the global
generator, and `end_epoch` sets the global generator to that copy's state after the epoch's last mask, which
is where `nn.Dropout` would have left it. Checkpoints are taken at epoch boundaries, so the same seed gives the
same weights and `--resume` ends where an uninterrupted run ends (tests/unit/test_masks.py; whole fits against
`nn.Dropout`: tests/unit/test_trainer.py).

That needs one rule: nothing else draws from the global generator during an epoch (shuffling has its own).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import torch

from training.model import MLP

CHUNK_DRAWS = 2**18
"""Mask elements drawn per hand-off between the threads, about (whole epochs of a small dataset, part of an epoch
of a large one, at least one batch): about 3 ms of drawing here. Each hand-off costs the training thread a few
GIL hand-overs, so small epochs are drawn several at a time; two chunks exist at a time, so this bounds the
memory too (1 MiB a chunk)."""


@dataclass
class _Batch:
    masks: list[torch.Tensor]  # one per dropout layer, in forward order
    rng_after: torch.Tensor | None  # the generator's state after these masks, for an epoch's last batch


class DropoutMasks:
    """Every training batch's dropout masks for `model`'s epochs of `epoch_batches` rows per batch, one chunk
    ahead. Use as a context manager around the epochs; take each batch's masks with `next_batch`, and call
    `end_epoch` after each epoch's last batch.

    The helper thread makes few torch calls per chunk (one `bernoulli_` per epoch or part of one, cut into
    masks on the training thread): each call hands the GIL back and forth between the threads, and one call per
    mask cost more than it saved on circles (a VM's thread wake-ups are slow)."""

    def __init__(self, model: MLP, epoch_batches: list[int]):
        dropouts = model.dropouts()
        rates = {dropout.p for dropout, _ in dropouts}
        if len(rates) != 1:
            raise ValueError(f"dropout masks are drawn for one dropout rate, the model has {sorted(rates)}")
        self._keep = 1 - rates.pop()
        self._widths = [width for _, width in dropouts]
        self._chunks = _chunks(epoch_batches, sum(self._widths))
        self._generator = torch.Generator()
        self._generator.set_state(torch.get_rng_state())
        self._to_draw = 0  # index into self._chunks of the next chunk to draw
        self._batches: deque[_Batch] = deque()
        self._epoch_rng: torch.Tensor | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dropout-masks")
        self._ahead: Future[list[tuple[torch.Tensor, torch.Tensor | None]]] | None = None

    def __enter__(self) -> DropoutMasks:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def next_batch(self) -> list[torch.Tensor]:
        """The next batch's masks, one per dropout layer in forward order: `x * mask` is the layer's output."""
        if not self._batches:
            self._batches = self._next_chunk()
        batch = self._batches.popleft()
        self._epoch_rng = batch.rng_after
        return batch.masks

    def end_epoch(self) -> None:
        """Leave the global generator where `nn.Dropout` would have left it after this epoch."""
        if self._epoch_rng is None:
            raise RuntimeError("dropout masks: the epoch ended before its last batch's masks were used")
        torch.set_rng_state(self._epoch_rng)
        self._epoch_rng = None

    def _next_chunk(self) -> deque[_Batch]:
        """The chunk drawn ahead, cut into masks, and the next one started. The first chunk is drawn on this
        thread, so the helper's start (its first torch call takes 1-4 ms) overlaps training instead of delaying
        it."""
        pieces = self._chunks[self._to_draw]
        drawn = self._ahead.result() if self._ahead else self._draw(self._to_draw)
        self._to_draw = (self._to_draw + 1) % len(self._chunks)
        self._ahead = self._pool.submit(self._draw, self._to_draw)
        batches: deque[_Batch] = deque()
        for (rows, ends_epoch), (flat, rng_after) in zip(pieces, drawn, strict=True):
            shapes = [(n, width) for n in rows for width in self._widths]
            masks = [m.view(shape) for m, shape in zip(flat.split([n * w for n, w in shapes]), shapes, strict=True)]
            per_batch = len(self._widths)
            batches.extend(_Batch(masks[i : i + per_batch], None) for i in range(0, len(masks), per_batch))
            batches[-1].rng_after = rng_after if ends_epoch else None
        return batches

    def _draw(self, index: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Chunk `index`'s masks, each piece's end to end, with the generator's state after a piece that ends
        an epoch."""
        drawn = []
        for rows, ends_epoch in self._chunks[index]:
            flat = torch.empty(sum(rows) * sum(self._widths))
            flat.bernoulli_(self._keep, generator=self._generator).div_(self._keep)
            drawn.append((flat, self._generator.get_state() if ends_epoch else None))
        return drawn


Piece = tuple[list[int], bool]
"""Rows of consecutive batches of one epoch, and whether the last of them ends the epoch."""


def _chunks(epoch_batches: list[int], width: int) -> list[list[Piece]]:
    """What each hand-off draws, cycling: about `CHUNK_DRAWS` mask elements of batches in epoch order."""
    per_epoch = sum(epoch_batches) * width
    if per_epoch <= CHUNK_DRAWS:
        return [[(epoch_batches, True)] * (CHUNK_DRAWS // per_epoch)]
    per_piece = max(1, CHUNK_DRAWS // (max(epoch_batches) * width))
    starts = range(0, len(epoch_batches), per_piece)
    return [[(epoch_batches[i : i + per_piece], i + per_piece >= len(epoch_batches))] for i in starts]
