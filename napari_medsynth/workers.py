"""Relaying a core event generator (the trainer) off the GUI thread, and the state of that run.

`TrainingWorker` runs ``make_events(control)`` in a napari thread worker. The Train widget's
generator is `medsynth.training.process.train_in_process`: the trainer runs in a child process and
this thread only waits for its events (a wait that releases the GIL), so the trainer's Python code
never competes with the GUI thread. `control` is a `TrainControl.shared` one, so pause, resume and
stop reach the child. Each event reaches the GUI thread through the worker's ``yielded`` signal;
the worker never touches layers or widgets. Stopping always goes through the trainer's
`TrainControl`, so a stop, napari's "cancel all" on closing the window, or napari waiting for
workers when the application quits all let the trainer write its checkpoint and finish instead of
abandoning it mid-step.

`TrainingRun` is the one place that knows whether training is idle, running, paused or stopping;
buttons observe its ``state_changed`` signal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from napari.qt.threading import GeneratorWorker
from psygnal import Signal

from medsynth.training.control import TrainControl

EventSource = Callable[[TrainControl], Iterator[Any]]
"""Called in the worker thread with the run's (process-shared) control; returns the trainer's event generator."""


@dataclass(frozen=True)
class Failed:
    """The last item of a run whose generator raised `error`.

    Errors travel as an item rather than through the worker's ``errored`` signal because superqt
    treats a RuntimeError from a generator (TrainingError is one) as a deleted worker and only warns.
    """

    error: Exception


def _relay(make_events: EventSource, control: TrainControl, done: threading.Event) -> Iterator[Any]:
    """Yield every event of ``make_events(control)``, then `Failed` if it raised; set `done` at the end."""
    try:
        yield from make_events(control)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the user as a notification
        yield Failed(exc)
    finally:
        done.set()


class TrainingWorker(GeneratorWorker):
    """A napari generator worker whose quit request asks the trainer to stop (with a checkpoint)."""

    def __init__(self, make_events: EventSource) -> None:
        self.control = TrainControl.shared()
        self.done = threading.Event()
        super().__init__(_relay, make_events, self.control, self.done)

    def quit(self) -> None:
        """Ask the trainer to stop; napari calls this for every worker when the application quits."""
        self.control.request_stop()

    def wait(self, timeout_s: float) -> bool:
        """Block until the event generator has finished; False if `timeout_s` passed first."""
        return self.done.wait(timeout_s)


def warm_up_torch() -> None:
    """Pay, on the GUI thread and once, the imports that torch defers to the first optimizer.

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


class TrainingRun:
    """At most one training worker at a time, and its state. Use from the GUI thread only."""

    state_changed = Signal(RunState)

    def __init__(self) -> None:
        self._state = RunState.IDLE
        self.worker: TrainingWorker | None = None

    @property
    def state(self) -> RunState:
        return self._state

    def start(self, make_events: EventSource, on_event: Callable[[Any], None]) -> TrainingWorker:
        """Run ``make_events(control)`` in a worker; `on_event` receives each event in the GUI thread."""
        if self._state is not RunState.IDLE:
            raise RuntimeError(f"a training run is already {self._state.value}")
        worker = TrainingWorker(make_events)
        worker.yielded.connect(on_event)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set(RunState.RUNNING)
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
        """Ask the trainer to stop after the current step and write a checkpoint."""
        if self._state in (RunState.RUNNING, RunState.PAUSED):
            self.worker.control.request_stop()
            self._set(RunState.STOPPING)

    def shutdown(self, timeout_s: float) -> bool:
        """Stop and block until the trainer has written its checkpoint; for closing the viewer or widget.

        Events still queued for the GUI are dropped: the widgets that would show them are going away.
        """
        worker = self.worker
        if worker is None:
            return True
        self.stop()
        finished = worker.wait(timeout_s)
        for signal in (worker.yielded, worker.finished):
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
