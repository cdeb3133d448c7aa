"""Training in a child process whose events are relayed to the caller, for callers with a GUI.

``for event in train_in_process(config, data, control): ...`` has the contract of
`medsynth.training.trainer.train`: the same events in the same order, `Finished` last, and the
trainer's exception raised in the caller when training fails. The trainer runs in a child process
started with the spawn method (forking a process that runs Qt threads is unsafe), so its Python
code never holds the caller's GIL: a viewer training this way stays as responsive as with training
in another program. The caller's thread waits in ``Queue.get`` with a timeout, which releases the
GIL, and notices a child that died without a word.

The data (MedImages, arrays, ``(image, target)`` pairs, `TwoDomains`) is sent once, when the child starts, by
`medsynth.training.shared_arrays`: a memory-mapped array (a NIfTI file) is mapped again from its
file in the child, an in-memory numpy array of `SHARED_MIN_BYTES` or more is copied once into shared
memory (unlinked when the relay ends, however it ends), a dask array travels as its task graph and a
smaller array as a pickled copy. Nothing is copied per step. Stop and pause requests travel through
`control`, which must be made with `TrainControl.shared`. The child is always ended when the relay
ends: after `Finished`, or, when the caller stops reading (``close()``) or raises, by asking it to
stop (it writes a checkpoint) and terminating it only if it does not within `stop_timeout_s`.

The child also stops with a checkpoint on SIGTERM (a job scheduler, ``kill``, or multiprocessing
ending it at the caller's exit) and when the caller's process dies. Ctrl+C in a terminal is left to
the caller, which stops the child through `control`.

The CLI trains in its own process (`trainer.train`): torchrun and DistributedDataParallel set up
each rank in the process they start.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

from medsynth.data.domains import TwoDomains
from medsynth.errors import InputError, SettingsError, TrainingError
from medsynth.io.image import MedImage
from medsynth.training import shared_arrays
from medsynth.training.config import TrainConfig
from medsynth.training.control import SPAWN, TrainControl
from medsynth.training.events import Event, Finished

POLL_S = 0.2
"""How often the relay, while no event arrives, checks that the child is alive."""
STOP_TIMEOUT_S = 120.0
"""How long ending the relay early waits for the child to stop with a checkpoint before terminating it."""
KILL_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 10.0
"""How long the child, at its end, waits for its last events to reach a caller that may have stopped reading."""


@dataclass(frozen=True)
class ChildFailure:
    """Sent by the child instead of further events when training raised."""

    type_name: str
    message: str
    traceback: str
    pickled: bytes | None
    """The exception itself, pickled in the child; None when it cannot be pickled."""

    def exception(self) -> Exception:
        """The child's exception, rebuilt with its type and message, or a TrainingError carrying them."""
        try:
            error = pickle.loads(self.pickled) if self.pickled is not None else None
        except Exception:  # noqa: BLE001 - any class that does not rebuild here falls back to the text
            error = None
        if isinstance(error, Exception):
            error.add_note(f"raised in the training process:\n{self.traceback}")
            return error
        return TrainingError(
            f"training failed in its process with {self.type_name}: {self.message}\n"
            f"traceback in the training process:\n{self.traceback}"
        )


def failure_of(exc: Exception) -> ChildFailure:
    """`exc` as the child sends it; its pickle is kept only if it rebuilds into an exception."""
    try:
        pickled: bytes | None = pickle.dumps(exc)
        pickle.loads(pickled)
    except Exception:  # noqa: BLE001 - exceptions with extra constructor arguments do not rebuild
        pickled = None
    return ChildFailure(type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)), pickled)


def train_in_process(
    config: TrainConfig,
    data: Sequence[MedImage | Any] | TwoDomains,
    control: TrainControl | None = None,
    *,
    threads: int | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Iterator[Event]:
    """Train in a child process, yielding the trainer's events; see the module docstring.

    `threads` sets the child's torch threads (None: torch's default). Raises the child's exception
    (same type and message) when it can be rebuilt here, else a TrainingError with its message and
    traceback; a TrainingError naming the exit code when the child dies without a word.
    """
    control = control if control is not None else TrainControl.shared()
    if not control.is_shared:
        raise ValueError(
            "train_in_process needs a control made with TrainControl.shared(), which a child process can read"
        )
    if threads is not None and threads < 1:
        raise SettingsError(f"threads={threads!r} must be at least 1 (or None for torch's default)")
    context = multiprocessing.get_context(SPAWN)
    shared: list[SharedMemory] = []
    try:
        sent = shared_arrays.share(data if isinstance(data, TwoDomains) else list(data), shared)
        events = context.Queue()
        process = context.Process(
            target=_child_main,
            args=(config, sent, control, events, threads),
            name=f"medsynth-train-{config.recipe}",
            daemon=True,  # terminated (SIGTERM: stop with a checkpoint) by multiprocessing when this process exits
        )
        _start(process, events)
        try:
            yield from _relay(process, events, config.out_dir)
        finally:
            _end(process, events, control, stop_timeout_s)
    finally:
        shared_arrays.release(shared)


def _start(process: BaseProcess, events: Queue) -> None:
    try:
        process.start()
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        events.close()
        raise InputError(
            f"the training data cannot be sent to the training process ({exc}): give the images as numpy "
            "or dask arrays (or MedImages holding them)"
        ) from exc


def _relay(process: BaseProcess, events: Queue, out_dir: Path) -> Iterator[Event]:
    """The child's events up to `Finished`; its exception, or TrainingError when it dies without a word."""
    while True:
        try:
            item = events.get(timeout=POLL_S)
        except queue.Empty:
            if process.is_alive():
                continue
            try:  # what it sent just before exiting may still be in the pipe
                item = events.get(timeout=POLL_S)
            except queue.Empty:
                raise TrainingError(_death_message(process.exitcode, out_dir)) from None
        if isinstance(item, ChildFailure):
            raise item.exception()
        yield item
        if isinstance(item, Finished):
            return


def _death_message(exitcode: int | None, out_dir: Path) -> str:
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        how += f", killed by {signal.Signals(-exitcode).name}"
    return (
        f"the training process ended ({how}) without finishing or reporting an error; checkpoints already "
        f"written in {out_dir} are intact: if the system ran out of memory, lower batch_size or resolution "
        "and resume from the latest checkpoint; if it ended right after starting, read the error it printed: "
        'a script that trains must keep its top level under if __name__ == "__main__": (the process re-runs it)'
    )


def _end(process: BaseProcess, events: Queue, control: TrainControl, timeout_s: float) -> None:
    """Join the child; if it still runs, ask it to stop (with a checkpoint), then terminate it after `timeout_s`."""
    if process.is_alive():
        control.request_stop()
        deadline = time.monotonic() + timeout_s
        while process.is_alive() and time.monotonic() < deadline:
            _discard(events)  # a child cannot exit while its queued events wait for a reader
            process.join(POLL_S)
    if process.is_alive():
        process.terminate()
        process.join(KILL_TIMEOUT_S)
    if process.is_alive():
        process.kill()
    process.join()
    events.close()


def _discard(events: Queue) -> None:
    try:
        while True:
            events.get_nowait()
    except queue.Empty:
        pass


def _child_main(
    config: TrainConfig, data: list[Any], control: TrainControl, events: Queue, threads: int | None
) -> None:
    """The child's whole life: train, sending each event, or the failure, to `events`."""
    # Ctrl+C in a terminal reaches the whole process group; the parent decides, and stops through `control`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: _request_stop_soon(control))
    _stop_when_parent_dies(control, events)
    try:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        from medsynth.training.trainer import train

        for event in train(config, shared_arrays.reopen(data), control):
            events.put(event)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the parent
        events.put(failure_of(exc))
    _flush(events)


def _request_stop_soon(control: TrainControl) -> None:
    """Stop from a signal handler: in a thread, because the handler may interrupt the loop holding the control's lock."""
    threading.Thread(target=control.request_stop, daemon=True).start()


def _flush(events: Queue) -> None:
    """Wait up to `FLUSH_TIMEOUT_S` for the queued events to reach the pipe, then exit regardless.

    A caller that stopped reading (its process exiting and joining this one) leaves a full pipe,
    and a process joins its queue's writer thread at exit: without a limit both would wait forever.
    """
    events.close()
    writer = threading.Thread(target=events.join_thread, daemon=True)
    writer.start()
    writer.join(FLUSH_TIMEOUT_S)
    if writer.is_alive():
        events.cancel_join_thread()


def _stop_when_parent_dies(control: TrainControl, events: Queue) -> None:
    """Stop training (with its checkpoint) if the parent dies without ending this process: no orphan."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_stop_after, args=(parent, control, events), daemon=True).start()


def _stop_after(parent: BaseProcess, control: TrainControl, events: Queue) -> None:
    parent.join()
    events.cancel_join_thread()  # nobody reads the events any more: exiting must not wait for them
    control.request_stop()
