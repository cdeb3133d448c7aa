"""Shared fixtures: paths of the real sample files that pip packages ship."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import pytest

from medsynth.data.samples import SAMPLES, sample_path


# PySide6 6.12.0 drops a reference to None on every call that returns nothing (1,000 `setEnabled`
# calls take 998; 6.11.3 takes none), about 5,000 per napari viewer created and closed. After some
# 30 viewers None's count reaches zero and Python aborts at exit ("none_dealloc"), failing the run
# after every test passed. Extra references to None, in a list that is deliberately never freed
# (not even when the interpreter shuts down), keep the whole suite clear of that.
_NONE_REFERENCES = [None] * 5_000_000
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_NONE_REFERENCES))


def pytest_configure(config):
    """One torch thread for the whole suite.

    The tests train tiny networks, which run as fast on one thread as on two, and 10 to 50 times
    faster when something else (a second test worker, Xvfb, another job) shares the two CI cores.
    """
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _collect_gui_garbage_on_the_main_thread(request):
    """After a test with viewers or widgets, free their cyclic garbage here, in the GUI thread.

    Left to the collector, it runs in whichever thread crosses the threshold first, e.g. a worker of
    the next test, and a Qt object freed outside the GUI thread crashes the process (seen as a
    segmentation fault in a worker thread's pure-Python code).
    """
    yield
    if {"make_napari_viewer", "qtbot"} & set(request.fixturenames):
        gc.collect()


@pytest.fixture(params=sorted(SAMPLES))
def any_sample(request) -> str:
    return request.param


@pytest.fixture
def us_cine_path() -> Path:
    return sample_path("us_cine")


@pytest.fixture
def ct_slice_path() -> Path:
    return sample_path("ct_slice")


@pytest.fixture
def mr_slice_path() -> Path:
    return sample_path("mr_slice")


@pytest.fixture
def mni152_path() -> Path:
    return sample_path("mni152")


@pytest.fixture
def nibabel_example4d() -> Path:
    """A real 4D fMRI NIfTI file (128x96x24x2) that nibabel ships for its tests."""
    from nibabel.testing import data_path

    return Path(data_path) / "example4d.nii.gz"


@pytest.fixture
def notifications():
    """Messages of the napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(notification) -> None:
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def in_view():
    """`shown_in_view(viewer, layer)`, for asserting that a new layer is where the user looks."""
    return shown_in_view


def shown_in_view(viewer, layer) -> bool:
    """Whether `layer` shows on the canvas as it is now: the sliders are inside its data and its whole
    displayed extent lies in the camera's field of view."""
    import numpy as np

    index = np.round(layer.world_to_data(viewer.dims.point))
    sliders = [k for k in range(layer.ndim) if k < layer.ndim - viewer.dims.ndisplay]
    on_slice = all(0 <= index[k] < layer.data.shape[k] for k in sliders)
    height, width = viewer.canvas.size
    half = np.array([height, width]) / (2 * viewer.scene.camera.zoom)
    center = np.asarray(viewer.scene.camera.center)[-2:]
    low, high = layer.extent.world[:, -2:]
    return on_slice and bool(np.all(low >= center - half) and np.all(high <= center + half))


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Every place medsynth looks for pretrained weight files is an empty folder."""
    import torch

    monkeypatch.setenv("MEDSYNTH_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path
