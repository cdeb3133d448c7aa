"""The one background runner of the widgets: events and the result on the GUI thread, failures as `Failed`,
stop requests honoured between events, at most one piece of work at a time."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.metrics.evaluate import evaluate
from napari_medsynth.widgets.metrics import measure
from napari_medsynth.workers import BackgroundRun, Failed, RunState, call, until_stopped

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


def _collect(run: BackgroundRun, work, qtbot) -> tuple[list, list]:
    """Events and results delivered by `run` for `work`, each with the thread it arrived on."""
    events, results = [], []
    run.start(work, lambda e: events.append((e, threading.get_ident())), lambda r: results.append((r, threading.get_ident())))
    qtbot.waitUntil(lambda: run.state is RunState.IDLE, timeout=WAIT_MS)
    return events, results


def test_events_and_the_result_of_a_real_metric_run_arrive_on_the_gui_thread(qtbot):
    ct = load_sample("ct_slice")
    blurred = ct.with_array(np.asarray(ct.array, dtype=np.float32) + 10.0)
    run = BackgroundRun()
    work = lambda control: until_stopped(measure(ct, blurred, metrics=("psnr", "ssim")), control)  # noqa: E731
    events, results = _collect(run, work, qtbot)
    assert [e for e, _ in events] == [(0, 3, "reading images"), (1, 3, "psnr"), (2, 3, "ssim"), (3, 3, "done")]
    (result, _), = results
    expected = evaluate(ct.array[None].astype(np.float32), blurred.array[None], metrics=("psnr", "ssim"))
    assert [(r.name, r.mean) for r in result] == [(r.name, r.mean) for r in expected]
    assert {thread for _, thread in events + results} == {threading.main_thread().ident}
    assert run.worker is None


def test_a_plain_call_gives_its_value_and_a_failure_becomes_the_last_event(qtbot):
    run = BackgroundRun()
    events, results = _collect(run, call(sorted, [3, 1, 2]), qtbot)
    assert events == [] and [r for r, _ in results] == [[1, 2, 3]]

    events, results = _collect(run, call(load_sample, "no such sample"), qtbot)
    (failed, _), = events
    assert isinstance(failed, Failed) and "no such sample" in str(failed.error)
    assert [r for r, _ in results] == [None]


def test_stop_ends_work_between_events_without_a_result_and_one_run_at_a_time(qtbot):
    release = threading.Event()

    def counting():
        for k in range(1000):
            release.wait(WAIT_MS / 1000)
            yield k
        return "all counted"

    run = BackgroundRun()
    states = []
    run.state_changed.connect(states.append)
    events, results = [], []
    worker = run.start(lambda control: until_stopped(counting(), control), events.append, results.append)
    with pytest.raises(RuntimeError, match="already running"):
        run.start(call(sorted, []), events.append)
    run.stop()
    release.set()
    qtbot.waitUntil(lambda: run.state is RunState.IDLE, timeout=WAIT_MS)
    assert worker.control.stop_requested and len(events) <= 1 and results == [None]
    assert states == [RunState.RUNNING, RunState.STOPPING, RunState.IDLE]


def test_shutdown_waits_for_the_end_and_drops_what_is_still_to_come(qtbot):
    started, release = threading.Event(), threading.Event()

    def slow(control):
        started.set()
        release.wait(WAIT_MS / 1000)
        yield "late event"
        return "late result"

    run = BackgroundRun()
    events, results = [], []
    run.start(slow, events.append, results.append)
    assert started.wait(WAIT_MS / 1000)
    assert run.shutdown(0.05) is False and run.state is RunState.IDLE and run.worker is None
    release.set()
    qtbot.wait(200)
    assert events == [] and results == []
