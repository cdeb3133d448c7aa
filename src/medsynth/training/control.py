"""Stop and pause requests that the trainer checks once per step, from another thread or process."""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.context import BaseContext

SPAWN = "spawn"
"""The start method of training processes: forking a process that runs Qt threads is unsafe."""


class TrainControl:
    """Shared between the caller (a GUI thread, a signal handler) and the training loop.

    By default its two events are `threading.Event` objects, for a loop in the same process. Built
    with a multiprocessing `context` (see `shared`), they are `multiprocessing` events instead: the
    control can then be handed to a child process at its start, and requests made in the parent
    reach the loop in the child.
    """

    def __init__(self, context: BaseContext | None = None) -> None:
        make_event = context.Event if context is not None else threading.Event
        self._stop = make_event()
        self._running = make_event()
        self._running.set()
        self.is_shared = context is not None

    @classmethod
    def shared(cls) -> TrainControl:
        """A control that a child process started with the spawn method can honour."""
        return cls(multiprocessing.get_context(SPAWN))

    def request_stop(self) -> None:
        self._stop.set()
        self._running.set()  # a paused loop must wake up to stop

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block while paused; True when running again (or stopping)."""
        return self._running.wait(timeout)
