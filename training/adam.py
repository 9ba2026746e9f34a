"""Adam's and AdamW's step with the optimizer's tensors listed once a fit, not once a step.

`torch.optim.Adam.step` lists every parameter's gradient and state again at each call before running torch's
fused kernel: about 120 µs a call here, a tenth of a circles step once the dropout masks and the backward pass
were trimmed (`training/masks.py`, `training/step.py`). `ListedStep` calls `torch.optim.adam.adam`, the public
function `Adam.step` itself calls, on lists made after the first step, reading the hyper-parameters from the
param group each time so that a scheduler's learning rate applies. It updates the optimizer's own state tensors
in place, so `state_dict`, checkpoints and `--resume` see what `Adam.step` would have left: the same bits
(tests/unit/test_adam.py). Other optimizers and settings take `optimizer.step()`.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam


class ListedStep:
    """`optimizer.step()`, faster for a fused Adam or AdamW with one param group. Make one per fit, after any
    `optimizer.load_state_dict` (the lists hold the state's tensors)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._state: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None
        self._state = None
        group = optimizer.param_groups[0]
        self._listed = (
            isinstance(optimizer, torch.optim.Adam)
            and len(optimizer.param_groups) == 1
            and group["fused"]
            and not (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"])
        )

    def __call__(self) -> None:
        if self._state is None:
            self.optimizer.step()  # also creates the state of a fresh optimizer
            if self._listed:
                params = list(self.optimizer.param_groups[0]["params"])
                states = [self.optimizer.state[p] for p in params]
                self._state = (params, *([s[key] for s in states] for key in ("exp_avg", "exp_avg_sq", "step")))
            return
        params, exp_avgs, exp_avg_sqs, steps = self._state
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        adam(
            params,
            [p.grad for p in params],
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            fused=True,
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
