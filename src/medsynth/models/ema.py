"""Exponential moving average of a generator's weights, for sampling and evaluation.

A thin use of `torch.optim.swa_utils.AveragedModel` with its EMA update; buffers (batch-norm
statistics) are averaged too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA:
    """`model` averaged as ``ema = decay * ema + (1 - decay) * model`` after each `update()`."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.source = model
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
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
