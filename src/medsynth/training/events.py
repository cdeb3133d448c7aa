"""What the trainer yields while it runs.

The training loop knows nothing about who watches it: the CLI prints these events, the napari worker
forwards them to the GUI thread, tests collect them. Images in events are in the data's units.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np


@dataclass(frozen=True)
class Started:
    """Sent once, before the first step."""

    recipe: str
    total_steps: int
    start_step: int
    device: str
    world_size: int = 1


@dataclass(frozen=True)
class Progress:
    """Sent every `log_every` steps."""

    step: int
    total_steps: int
    losses: dict[str, float]
    """Every loss term the recipe reports, by name (e.g. ``d_loss``, ``g_loss``, ``gp``)."""
    learning_rates: dict[str, float]
    images_per_s: float
    eta_s: float
    phase: str = ""
    """The recipe's training phase of the latest step (e.g. SinGAN's ``"scale 3/7"``); empty for one-phase recipes."""


@dataclass(frozen=True)
class Samples:
    """Generated images from the EMA generator, sent every `sample_every` steps."""

    step: int
    images: np.ndarray
    """(N, H, W) for 2D recipes or (N, T, H, W) for sequences, in data units."""
    spacing: tuple[float, ...] = ()


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path


@dataclass(frozen=True)
class Paused:
    step: int


@dataclass(frozen=True)
class Resumed:
    step: int


@dataclass(frozen=True)
class Finished:
    """Always the last event of a run that did not raise."""

    step: int
    checkpoint: Path | None
    reason: str = "completed"
    """``"completed"`` or ``"stopped"``."""
    losses: dict[str, float] = field(default_factory=dict)


Event = Started | Progress | Samples | CheckpointSaved | Paused | Resumed | Finished


Result = TypeVar("Result")


def drain(events: Generator[object, None, Result]) -> Result:
    """Run a generator of events to its end, ignoring the events; its return value (for scripts and tests)."""
    while True:
        try:
            next(events)
        except StopIteration as done:
            return done.value
