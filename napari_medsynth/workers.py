"""The one runner of background work for every widget: a core event generator off the GUI thread.

Work is a function of a `TrainControl` that returns a generator of events and, at its end, a result
(the generator's return value): training through `medsynth.training.process.train_in_process` (the
Train widget, and the Lesions widget's SinGAN), sequence generation, a metric computation, or one
plain function call (`call`). `BackgroundRun.start(work, on_event, on_result)` runs it in a napari
thread worker; each event reaches `on_event` on the GUI thread through the worker's ``yielded``
signal and the result reaches `on_result` through ``returned``, so neither the work nor the worker
touches layers or widgets. An exception ends the events with `Failed`.

Training runs in a child process: this thread only waits for its events (a wait that releases the
GIL), so the trainer's Python code never competes with the GUI thread. The control is made with
`TrainControl.shared`, so pause, resume and stop reach the child. Stopping always goes through the
control, so a stop, napari's "cancel all" on closing the window, or napari waiting for workers when
the application quits all let a trainer write its checkpoint and finish instead of abandoning it
mid-step; work without a checkpoint of its own ends between two events (`until_stopped`).

`BackgroundRun` is the one place that knows whether its work is idle, running, paused or stopping;
buttons observe its ``state_changed`` signal. A widget holds one per kind of work that may run at
the same time as another (the Train widget: training, and generation from a checkpoint), made with
the widget as its Qt parent: when the widget is deleted, so is the run, and Qt then delivers nothing
more of work that outlives them (a computation left to finish on its own) to either.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from napari.qt.threading import GeneratorWorker
from qtpy.QtCore import QObject, Signal

from medsynth.training.control import TrainControl

Work = Callable[[TrainControl], Generator[Any, None, Any]]
"""Called in the worker thread with the run's (process-shared) control; returns the generator of events."""

TRAIN_THREADS = max(1, (os.cpu_count() or 2) - 1)
"""Torch threads of a training process started from the viewer: one core stays with the viewer. On a busy
2-core machine one thread also trained about ten times faster than two (docs/benchmarks.md, "Responsiveness")."""


@dataclass(frozen=True)
class Failed:
    """The last event of work that raised `error`.

    Errors travel as an event rather than through the worker's ``errored`` signal because superqt
    treats a RuntimeError from a generator (TrainingError is one) as a deleted worker and only warns.
    """

    error: Exception


def call(function: Callable[..., Any], *args: Any) -> Work:
    """Work of one plain function call: no events, the call's value as the result."""

    def work(_control: TrainControl) -> Generator[Any, None, Any]:
        yield from ()  # makes this a generator, which is what the worker runs
        return function(*args)

    return work


def until_stopped(events: Iterator[Any], control: TrainControl) -> Generator[Any, None, Any]:
    """`events` up to their end (their return value is the result), or up to a stop request (no result)."""
    try:
        while not control.stop_requested:
            try:
                event = next(events)
            except StopIteration as done:
                return done.value
            yield event
        return None
    finally:
        if hasattr(events, "close"):
            events.close()


def _ignore(_result: Any) -> None:
    """The result of work started without `on_result` (a trainer's ends in its `Finished` event)."""


def _relay(work: Work, control: TrainControl, done: threading.Event) -> Generator[Any, None, Any]:
    """Every event of ``work(control)`` and its result; `Failed` (and no result) if it raised. Sets `done` at the end."""
    try:
        return (yield from work(control))
    except Exception as exc:  # noqa: BLE001 - every failure must reach the user as a notification
        yield Failed(exc)
        return None
    finally:
        done.set()


class EventWorker(GeneratorWorker):
    """A napari generator worker whose quit request asks the work to stop (a trainer: with a checkpoint)."""

    def __init__(self, work: Work) -> None:
        self.control = TrainControl.shared()
        self.done = threading.Event()
        super().__init__(_relay, work, self.control, self.done)

    def quit(self) -> None:
        """Ask the work to stop; napari calls this for every worker when the application quits."""
        self.control.request_stop()

    def wait(self, timeout_s: float) -> bool:
        """Block until the work has finished; False if `timeout_s` passed first."""
        return self.done.wait(timeout_s)


def warm_up_torch() -> None:
    """Pay, once and before any generation, the imports that torch defers to the first optimizer.

    Creating a torch optimizer first imports ``torch._dynamo`` (seconds of imports that hold the GIL
    for stretches of half a second). Training now pays it in its own process, but Generate builds
    its recipe (optimizers included) in a worker thread of this process, where it froze the viewer
    that long; done here, it is part of opening the widget.
    """
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


class RunState(Enum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


class BackgroundRun(QObject):
    """At most one piece of background work at a time, and its state. Use from the GUI thread only."""

    state_changed = Signal(object)
    """The new `RunState`."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._state = RunState.IDLE
        self.worker: EventWorker | None = None

    @property
    def state(self) -> RunState:
        return self._state

    def start(
        self, work: Work, on_event: Callable[[Any], None], on_result: Callable[[Any], None] | None = None
    ) -> EventWorker:
        """Run ``work(control)`` in a worker; `on_event` receives each event, `on_result` the result, in the GUI thread."""
        if self._state is not RunState.IDLE:
            raise RuntimeError(f"background work is already {self._state.value}")
        worker = EventWorker(work)
        worker.yielded.connect(on_event)
        worker.returned.connect(on_result if on_result is not None else _ignore)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set(RunState.RUNNING)
        # Python frees cyclic garbage in whichever thread crosses the collection threshold. Cycles that
        # hold Qt objects (a replaced settings form, a closed dock) must die on the GUI thread: freed
        # in the worker, they crash the process. Collecting here clears what the GUI left so far.
        gc.collect()
        worker.start()
        return worker

    def pause(self) -> None:
        if self._state is RunState.RUNNING:
            self.worker.control.pause()
            self._set(RunState.PAUSED)

    def resume(self) -> None:
        if self._state is RunState.PAUSED:
            self.worker.control.resume()
            self._set(RunState.RUNNING)

    def stop(self) -> None:
        """Ask the work to stop: a trainer after the current step, with a checkpoint; other work between two events."""
        if self._state in (RunState.RUNNING, RunState.PAUSED):
            self.worker.control.request_stop()
            self._set(RunState.STOPPING)

    def shutdown(self, timeout_s: float) -> bool:
        """Stop and block up to `timeout_s` until the work has ended (a trainer: written its checkpoint).

        For closing the viewer or widget: events and the result still to come are dropped, since the
        widgets that would show them are going away. False when the work had not ended in time.
        """
        worker = self.worker
        if worker is None:
            return True
        self.stop()
        finished = worker.wait(timeout_s)
        for signal in (worker.yielded, worker.returned, worker.finished):
            signal.disconnect()
        self._on_finished()
        return finished

    def _on_finished(self) -> None:
        self.worker = None
        self._set(RunState.IDLE)

    def _set(self, state: RunState) -> None:
        if state is not self._state:
            self._state = state
            self.state_changed.emit(state)
