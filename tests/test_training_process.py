"""train_in_process: the trainer in a spawned child process, on real sample data, against in-process `train`.

Every spawn imports torch in the child (seconds on a 2-core machine), so each test starts one child
and checks everything it can about it.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from itertools import islice
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch

from medsynth.data.domains import TwoDomains
from medsynth.data.samples import load_sample
from medsynth.errors import InputError, SettingsError, TrainingError
from medsynth.io import read_image, write_nifti
from medsynth.training import shared_arrays
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


@pytest.fixture
def nifti_ct(tmp_path, ct):
    """The CT slice written to an uncompressed NIfTI and read back: its array views the file's memory map."""
    return read_image(write_nifti(ct, tmp_path / "ct.nii"))


@pytest.fixture
def released_blocks(monkeypatch):
    """Every in-memory array goes through shared memory; the names of the blocks released are recorded."""
    monkeypatch.setattr(shared_arrays, "SHARED_MIN_BYTES", 1)
    names: list[str] = []
    release = shared_arrays.release

    def recording(shared):
        names.extend(block.name for block in shared)
        release(shared)

    monkeypatch.setattr(shared_arrays, "release", recording)
    return names


def unlinked(name: str) -> bool:
    try:
        SharedMemory(name=name).close()
    except FileNotFoundError:
        return True
    return False


def test_a_memory_mapped_image_travels_as_a_small_handle_and_reopens_read_only_from_its_file(tmp_path, nifti_ct):
    assert not nifti_ct.array.flags.owndata  # a view of the file's memory map, not a copy
    flipped = nifti_ct.with_array(nifti_ct.array[::-1, 1::3])
    shared: list[SharedMemory] = []
    for image in (nifti_ct, flipped):
        sent = shared_arrays.share(image, shared)
        assert isinstance(sent.array, shared_arrays.MappedArray) and image.array is not sent.array
        assert len(pickle.dumps(sent.array)) < 1000 < image.array.nbytes
        received = shared_arrays.reopen(pickle.loads(pickle.dumps(sent)))
        assert isinstance(received.array, np.memmap) and Path(received.array.filename) == tmp_path / "ct.nii"
        assert not received.array.flags.writeable
        np.testing.assert_array_equal(received.array, image.array)
        assert received.spacing == image.spacing and received.units == "HU"
    assert shared == []

    handle = shared_arrays.share(nifti_ct.array, shared)
    write_nifti(flipped, tmp_path / "other.nii").replace(tmp_path / "ct.nii")
    with pytest.raises(InputError, match=r"ct\.nii: the file was replaced"):
        handle.open()


def test_a_large_in_memory_array_goes_through_shared_memory_until_released(monkeypatch, ct):
    monkeypatch.setattr(shared_arrays, "SHARED_MIN_BYTES", ct.array.nbytes)
    small, lazy = ct.array[:64], da.from_array(ct.array, chunks=64)
    shared: list[SharedMemory] = []
    sent = shared_arrays.share([(ct, ct.array[::-1]), small, lazy], shared)
    (image, target), kept, kept_lazy = sent
    assert kept is small and kept_lazy is lazy
    assert isinstance(image.array, shared_arrays.SharedArray) and isinstance(target, shared_arrays.SharedArray)
    assert len(shared) == 2 and len(pickle.dumps(sent[0])) < 2000 < ct.array.nbytes

    (received, received_target), *_ = shared_arrays.reopen(pickle.loads(pickle.dumps(sent)))
    np.testing.assert_array_equal(received.array, ct.array)
    np.testing.assert_array_equal(received_target, ct.array[::-1])
    assert not received.array.flags.writeable and received.units == ct.units
    names = [block.name for block in shared]
    shared_arrays.release(shared)
    assert shared == [] and all(unlinked(name) for name in names)

    # a /dev/shm too small for the array (containers often have 64 MiB): pickled, not a block that would crash
    almost_full = shutil.disk_usage("/")._replace(free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: almost_full)
    assert shared_arrays.share(ct.array, shared) is ct.array and shared == []



def test_two_domains_travel_as_handles_and_reopen_as_two_domains(monkeypatch, ct):
    monkeypatch.setattr(shared_arrays, "SHARED_MIN_BYTES", ct.array.nbytes)
    shared: list[SharedMemory] = []
    sent = shared_arrays.share(TwoDomains(a=[ct], b=[ct.array[::-1]]), shared)
    assert isinstance(sent, TwoDomains) and len(shared) == 2 and len(pickle.dumps(sent)) < 2000
    received = shared_arrays.reopen(pickle.loads(pickle.dumps(sent)))
    assert isinstance(received, TwoDomains)
    np.testing.assert_array_equal(received.a[0].array, ct.array)
    np.testing.assert_array_equal(received.b[0], ct.array[::-1])
    shared_arrays.release(shared)

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
def test_the_childs_error_is_raised_in_the_parent_with_its_type_and_message_and_shared_memory_unlinked(
    tmp_path, ct, released_blocks
):
    bad = config(tmp_path, "bad")
    bad.settings = {**TINY, "resolution": 32}
    with pytest.raises(SettingsError, match="resolution=32") as raised:
        list(train_in_process(bad, [ct]))
    assert any("raised in the training process" in note and "check_config" in note for note in raised.value.__notes__)
    assert no_children_left()
    assert len(released_blocks) == 1 and unlinked(released_blocks[0])  # the CT went through shared memory
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


@pytest.mark.slow
def test_mapped_and_shared_data_train_as_in_process_and_sigterm_stops_the_child_with_a_checkpoint(
    tmp_path, ct, nifti_ct, released_blocks
):
    def first_losses(events) -> list[dict[str, float]]:
        """The losses of the first two steps; the events after them are left unread."""
        return [event.losses for event in islice((e for e in events if isinstance(e, Progress)), 2)]

    expected = first_losses(train(config(tmp_path, "here"), [nifti_ct, ct]))
    events = train_in_process(config(tmp_path, "child"), [nifti_ct, ct], threads=torch.get_num_threads())
    assert first_losses(events) == expected and len(expected) == 2
    (child,) = multiprocessing.active_children()
    os.kill(child.pid, signal.SIGTERM)
    rest = list(events)
    finished = rest[-1]
    assert isinstance(finished, Finished) and finished.reason == "stopped" and 2 <= finished.step < 10_000
    assert isinstance(rest[-2], CheckpointSaved) and load_checkpoint(finished.checkpoint).step == finished.step
    assert child.exitcode == 0 and no_children_left()
    assert len(released_blocks) == 1 and unlinked(released_blocks[0])  # the in-memory CT went through one block


PARENT_SCRIPT = """
import os
import sys

from medsynth.data.samples import load_sample
from medsynth.training.config import TrainConfig
from medsynth.training.events import Progress
from medsynth.training.process import train_in_process

if __name__ == "__main__":
    settings = {settings!r}
    config = TrainConfig("dcgan", sys.argv[1], settings=settings, steps=10_000, device="cpu", checkpoint_every=1000)
    for event in train_in_process(config, [load_sample("ct_slice")]):
        if isinstance(event, Progress):
            import multiprocessing

            print(multiprocessing.active_children()[0].pid, flush=True)
            os._exit(0)
"""


def gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie counts: its reaper is no longer us)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_when_the_parent_dies_the_child_stops_with_a_checkpoint_and_exits(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT_SCRIPT.format(settings=TINY)))
    parent = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")], check=False, capture_output=True, text=True, timeout=120
    )
    assert parent.returncode == 0, parent.stderr
    child = int(parent.stdout.split()[-1])
    deadline = time.monotonic() + 60
    try:
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone(child)
    finally:
        if not gone(child):  # an orphan would go on training for 10 000 steps
            os.kill(child, signal.SIGKILL)
    (written,) = (tmp_path / "run").glob("checkpoint-*.safetensors")
    assert load_checkpoint(written).step >= 1


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
