"""What the benchmarks that compare models at equal cost share: training for a CPU budget, and timing in turns.

Both count this process's CPU time, not wall time, so that other jobs on a shared machine lengthen a
run but do not change its figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.events import Finished
from medsynth.training.trainer import train


def train_for_cpu_seconds(config: TrainConfig, data: Any, budget: float) -> tuple[Finished, float]:
    """Train `config` on `data` until this process has used `budget` CPU seconds, then stop with a checkpoint.

    Returns the run's `Finished` event and the CPU seconds it used (the last step and checkpoint included).
    """
    control = TrainControl()
    start = time.process_time()
    for event in train(config, data, control):
        if time.process_time() - start >= budget:
            control.request_stop()
        if isinstance(event, Finished):
            return event, time.process_time() - start
    raise RuntimeError("training ended without a Finished event")


def alternating_cpu_seconds(calls: dict[str, Callable[[int], object]], rounds: int) -> dict[str, float]:
    """CPU seconds of each call summed over `rounds` rounds, each call given the round number.

    Within a round the calls take turns, so that all of them see the same load; one more round first
    warms up (imports, allocator, caches) and is not counted.
    """
    seconds = dict.fromkeys(calls, 0.0)
    for round_ in range(rounds + 1):
        for name, call in calls.items():
            start = time.process_time()
            call(round_)
            if round_:
                seconds[name] += time.process_time() - start
    return seconds
