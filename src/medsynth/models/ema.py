"""Exponential moving average of a generator's weights, for sampling and evaluation.

Built on `torch.optim.swa_utils.AveragedModel`; buffers (batch-norm statistics) are averaged too.
The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after `n` updates (as TensorFlow's
``ExponentialMovingAverage(num_updates=...)``): with a fixed 0.999 the average of a run of a few
hundred steps would still be half made of the random initial weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMA:
    """`model` averaged as ``ema = decay * ema + (1 - decay) * model`` after each `update()`."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.source = model
        self.averaged = AveragedModel(model, multi_avg_fn=_warmup_ema(decay), use_buffers=True)
        self.averaged.requires_grad_(False)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged copy of the model (in eval mode)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self) -> None:
        self.averaged.update_parameters(self.source)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)


def _warmup_ema(decay: float):
    """`AveragedModel` multi-tensor update with the ramped decay; `num_averaged` counts earlier updates."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (batch-norm batch counts) are counts, not averages
            for mean, value in zip(averaged, current):
                mean.copy_(value)

    return update
