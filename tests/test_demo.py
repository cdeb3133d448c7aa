"""The main job (`scripts/demo.sh`) runs end to end on the sample data and writes what it promises."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medsynth.io import read_image
from napari_medsynth.demo import WIDGETS, load_data, run_workflow

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_demo_workflow_writes_synthetic_outputs_and_a_screenshot(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    load_data(viewer)
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget("napari-medsynth", name, tabify=True)
    assert viewer.layers["example4d"].ndim == 4

    summary = run_workflow(viewer, tmp_path, steps=3)

    samples = read_image(summary["samples_nifti"])
    assert samples.synthetic is not None and samples.array.shape[0] == 16
    assert all(pydicom.dcmread(p).SyntheticData == "YES" for p in summary["samples_dicom"])
    assert np.isfinite(summary["metrics"]["swd"])
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "screenshot.png").stat().st_size > 10_000
    synthetic = viewer.layers[-1]
    assert synthetic.name.endswith("[SYNTHETIC]") and synthetic.visible and viewer.layers["mni152"].visible
    template_x, synthetic_x = viewer.layers["mni152"].extent.world[:, -1], synthetic.extent.world[:, -1]
    assert synthetic_x[0] > template_x[1]  # beside the template, not under it
    assert viewer.window.dock_widgets["Train (napari-medsynth)"].ready  # the screenshot shows a loaded dock
