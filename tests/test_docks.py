"""Every dock fits a screen: a scroll area, a minimum height of at most 900 px, advanced settings folded;
the Plugins menu lists the docks in the order of the workflow."""

from __future__ import annotations

import subprocess
import sys

import pytest
from qtpy.QtWidgets import QScrollArea
from superqt import QCollapsible

from napari_medsynth.widgets.dock import MAX_MIN_HEIGHT_PX

pytestmark = pytest.mark.gui

DOCKS = ("Train", "Generate", "Lesions", "Metrics", "Reader study")


@pytest.mark.parametrize("name", DOCKS)
def test_a_dock_scrolls_and_asks_for_at_most_900_px(make_napari_viewer, qtbot, name):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medsynth", "mni152")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", name)
    if name == "Train":
        assert not widget.ready  # opened before torch and the recipes are loaded, in the background
        qtbot.waitUntil(lambda: widget.ready, timeout=60_000)
    assert widget.findChildren(QScrollArea), f"{name} has no scroll area"
    assert dock.minimumSizeHint().height() <= MAX_MIN_HEIGHT_PX
    [advanced] = widget.findChildren(QCollapsible)
    assert advanced.text() == "Advanced settings" and not advanced.isExpanded()
    advanced.expand(animate=False)  # unfolded, the dock scrolls rather than growing
    assert dock.minimumSizeHint().height() <= MAX_MIN_HEIGHT_PX


def test_all_docks_together_fit_a_1080_px_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    docks = [viewer.window.add_plugin_dock_widget("napari-medsynth", name)[0] for name in DOCKS]
    assert sum(dock.minimumSizeHint().height() for dock in docks) <= MAX_MIN_HEIGHT_PX
    assert viewer.window._qt_window.minimumSizeHint().height() <= 1080


def test_the_plugins_menu_lists_the_docks_in_workflow_order(make_napari_viewer):
    viewer = make_napari_viewer()
    [submenu] = [action.menu() for action in viewer.window.plugins_menu.actions() if action.text() == "MedSynth"]
    assert [action.text() for action in submenu.actions()] == ["Train", "Generate", "Lesions", "Metrics", "Reader study"]


OPEN_TRAIN = """
import sys, threading

first_import = []


class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            first_import.append(threading.current_thread() is threading.main_thread())


sys.meta_path.insert(0, Spy())
import napari
from napari.qt.threading import WorkerBase
from qtpy.QtCore import QEventLoop, QTimer

viewer = napari.Viewer(show=False)
_, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
# A slow poll: PySide6 6.12 loses a reference to None per call returning nothing (see conftest.py).
loop, poll = QEventLoop(), QTimer()
poll.timeout.connect(lambda: widget.ready and loop.quit())
poll.start(100)
QTimer.singleShot(300_000, loop.quit)
loop.exec()
print("ready" if widget.ready else "not ready", "main thread" if first_import[0] else "worker thread")
viewer.close()
WorkerBase.await_workers()
"""


@pytest.mark.slow
def test_opening_the_train_dock_imports_torch_off_the_gui_thread():
    """In a fresh process (this one has torch already): the dock opens without it; a worker imports it."""
    out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", OPEN_TRAIN], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "ready worker thread"
