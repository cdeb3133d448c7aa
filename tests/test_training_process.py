"""train_in_process: the trainer in a spawned child process, on real sample data, against in-process `train`.

Every spawn imports torch in the child (seconds on a 2-core machine), so each test starts one child
and checks everything it can about it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from medsynth.data.samples import load_sample
from medsynth.errors import SettingsError, TrainingError
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.events import CheckpointSaved, Finished, Paused, Progress, Resumed, Samples, Started
from medsynth.training.process import ChildFailure, failure_of, train_in_process
from medsynth.training.trainer import train

TINY = {"resolution": 64, "batch_size": 2, "latent_dim": 8, "g_channels": 4, "d_channels": 4}


@pytest.fixture(scope="module")
def ct():
    return load_sample("ct_slice")


def config(tmp_path, name: str, **options) -> TrainConfig:
    values = {"steps": 10_000, "device": "cpu", "sample_every": 0, "log_every": 1, "checkpoint_every": 1000, **options}
    return TrainConfig("dcgan", tmp_path / name, settings=TINY, **values)


def no_children_left() -> bool:
    return not multiprocessing.active_children()


@pytest.mark.slow
def test_the_child_yields_the_events_and_losses_of_in_process_training(tmp_path, ct):
    options = {"steps": 3, "sample_every": 2}
    in_process = list(train(config(tmp_path, "here", **options), [ct]))
    relayed = list(train_in_process(config(tmp_path, "child", **options), [ct], threads=torch.get_num_threads()))

    assert [type(e) for e in relayed] == [type(e) for e in in_process]
    assert [type(e) for e in relayed] == [Started, Progress, Progress, Samples, Progress, CheckpointSaved, Finished]
    assert [e.losses for e in relayed if isinstance(e, Progress)] == [
        e.losses for e in in_process if isinstance(e, Progress)
    ]
    samples_child, samples_here = (
        next(e for e in events if isinstance(e, Samples)) for events in (relayed, in_process)
    )
    np.testing.assert_array_equal(samples_child.images, samples_here.images)
    finished = relayed[-1]
    assert finished.reason == "completed" and finished.step == 3
    assert finished.checkpoint == tmp_path / "child" / finished.checkpoint.name
    assert load_checkpoint(finished.checkpoint).step == 3
    assert no_children_left()


@pytest.mark.slow
def test_pause_resume_and_stop_from_the_parent(tmp_path, ct):
    control = TrainControl.shared()
    seen, times = [], {}
    for event in train_in_process(config(tmp_path, "run"), [ct], control):
        seen.append(event)
        if isinstance(event, Progress) and "paused" not in times:
            control.pause()
            times["paused"] = time.monotonic()
        elif isinstance(event, Paused):
            assert control.paused
            threading.Timer(0.5, control.resume).start()
        elif isinstance(event, Resumed):
            times["resumed"] = time.monotonic()
        elif isinstance(event, Progress) and "resumed" in times and "stop" not in times:
            control.request_stop()
            times["stop"] = event.step

    kinds = [type(e) for e in seen]
    paused, resumed = kinds.index(Paused), kinds.index(Resumed)
    assert paused < resumed and kinds[paused + 1] is Resumed  # no step while paused
    assert seen[paused].step == seen[resumed].step >= 1
    assert times["resumed"] - times["paused"] >= 0.5
    finished = seen[-1]
    assert isinstance(finished, Finished) and finished.reason == "stopped"
    assert times["stop"] <= finished.step < 10_000
    assert isinstance(seen[-2], CheckpointSaved) and seen[-2].path == finished.checkpoint
    checkpoint = load_checkpoint(finished.checkpoint)
    assert checkpoint.step == finished.step and checkpoint.recipe == "dcgan"
    assert no_children_left()


@pytest.mark.slow
def test_a_stop_while_the_child_imports_and_closing_the_relay_both_end_the_child_with_a_checkpoint(tmp_path, ct):
    control = TrainControl.shared()
    asked = threading.Timer(0.5, control.request_stop)  # the child needs seconds to import torch
    asked.start()
    events = list(train_in_process(config(tmp_path, "early"), [ct], control))
    assert not asked.is_alive()
    assert [type(e) for e in events] == [Started, CheckpointSaved, Finished]
    assert events[-1].reason == "stopped" and events[-1].step == 0
    assert load_checkpoint(events[-1].checkpoint).step == 0
    assert no_children_left()

    events = train_in_process(config(tmp_path, "closed"), [ct])
    next(events)
    next(events)
    events.close()  # the caller stops reading: the child is asked to stop, writes its checkpoint, is joined
    assert no_children_left()
    written = sorted((tmp_path / "closed").glob("checkpoint-*.safetensors"))
    assert len(written) == 1 and load_checkpoint(written[0]).step >= 1


@pytest.mark.slow
def test_the_childs_error_is_raised_in_the_parent_with_its_type_and_message(tmp_path, ct):
    bad = config(tmp_path, "bad")
    bad.settings = {**TINY, "resolution": 32}
    with pytest.raises(SettingsError, match="resolution=32") as raised:
        list(train_in_process(bad, [ct]))
    assert any("raised in the training process" in note and "check_config" in note for note in raised.value.__notes__)
    assert no_children_left()
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_killed_child_is_a_training_error_naming_the_exit_code(tmp_path, ct):
    events = train_in_process(config(tmp_path, "killed"), [ct])
    assert isinstance(next(events), Started)
    (child,) = multiprocessing.active_children()
    os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(TrainingError, match=r"exit code -9, killed by SIGKILL") as raised:
        for _ in events:
            pass
    assert str(tmp_path / "killed") in str(raised.value)
    assert no_children_left()


class NeedsTwoArguments(Exception):
    """Rebuilding from a pickle calls ``cls(*args)`` with one argument, which this class refuses."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(f"{what} at {where}")


def test_an_error_that_cannot_cross_the_process_boundary_becomes_a_training_error_with_its_traceback():
    def fail() -> None:
        raise NeedsTwoArguments("boom", "step 3")

    try:
        fail()
    except NeedsTwoArguments as exc:
        failure = failure_of(exc)
    assert failure.pickled is None
    error = failure.exception()
    assert type(error) is TrainingError
    assert "NeedsTwoArguments: boom at step 3" in str(error) and "in fail" in str(error)

    rebuilt = failure_of(SettingsError("steps=0 must be at least 1")).exception()
    assert type(rebuilt) is SettingsError and str(rebuilt) == "steps=0 must be at least 1"
    assert (
        ChildFailure("X", "m", "tb", b"not a pickle")
        .exception()
        .args[0]
        .startswith("training failed in its process with X: m")
    )


def test_a_control_the_child_cannot_read_or_bad_threads_are_refused_before_any_child_starts(tmp_path, ct):
    with pytest.raises(ValueError, match=r"TrainControl.shared\(\)"):
        next(train_in_process(config(tmp_path, "a"), [ct], TrainControl()))
    with pytest.raises(SettingsError, match="threads=0"):
        next(train_in_process(config(tmp_path, "b"), [ct], threads=0))
    assert no_children_left()
