"""`hagan` from the viewer: the Train widget trains it on a real MNI152 layer and generates synthetic images from it."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.training.checkpoint import load_checkpoint
from napari_medsynth.layers import SYNTHETIC_SUFFIX, to_layer_data
from napari_medsynth.widgets.train import TrainWidget
from napari_medsynth.workers import RunState

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TINY = {"batch_size": 4, "g_channels": 4, "d_channels": 4, "latent_dim": 16, "mix_probability": 1.0, "mix_warmup_steps": 0}
WAIT_MS = 60_000


def test_hagan_trains_from_the_viewer_and_generates_synthetic_images(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    mni = load_sample("mni152")
    data, kwargs, _ = to_layer_data(mni.with_array(np.asarray(mni.array[70:90])))
    source = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
    assert isinstance(widget, TrainWidget)
    widget.data["layers"].value = [source]
    widget.recipe.value = "hagan"
    assert {"attnmix", "hierarchical", "reverse_skip", "diffaugment"} <= set(widget.settings.values())
    widget.settings.set_values(TINY)
    widget.device.value = "cpu"
    widget.out_dir.value = tmp_path / "run"
    for name, value in {"steps": 3, "log_every": 1, "sample_every": 3, "checkpoint_every": 1000}.items():
        widget.options[name].value = value

    widget.start_button.native.click()
    assert widget.run.state is RunState.RUNNING
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert widget.status.value == "completed at step 3"
    assert {"d_consistency", "d_mix", "d_pixel_real", "g_pixel"} <= set(widget.loss_plot.series)
    assert widget.preview_layer.name.endswith(SYNTHETIC_SUFFIX) and widget.preview_layer.data.shape == (8, 64, 64)
    assert load_checkpoint(widget.checkpoint_path).recipe == "hagan"

    widget.num_samples.value = 4
    widget.generate_button.native.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=WAIT_MS)
    generated = viewer.layers[-1]
    assert generated.name.endswith(SYNTHETIC_SUFFIX) and generated.data.shape == (4, 64, 64)
    assert generated.metadata["medsynth"]["synthetic"]["model"] == "hagan"
    assert np.asarray(generated.data).max() > 1.5  # MR intensities of the template, not [-1, 1]
