"""`hagan` from the viewer: the Train widget trains it on a real MNI152 layer and generates synthetic images from it;
the Generate widget draws images from its checkpoint. Both on the training data's grid."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.generate import generate
from medsynth.training.trainer import train
from napari_medsynth.layers import SYNTHETIC_SUFFIX, to_layer_data
from napari_medsynth.widgets.generate import GenerateWidget
from napari_medsynth.widgets.train import TrainWidget
from napari_medsynth.workers import RunState

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TINY = {"batch_size": 4, "g_channels": 4, "d_channels": 4, "latent_dim": 16, "mix_probability": 1.0, "mix_warmup_steps": 0}
WAIT_MS = 60_000
# The template's 233 x 197 mm axial slices are padded to 233 px and trained at 64 px.
PIXEL_SCALE = 233 / 64


@pytest.fixture(scope="module")
def mni():
    """The MNI152 template's axial slices 70 to 89."""
    image = load_sample("mni152")
    return image.with_array(np.asarray(image.array[70:90]))


@pytest.fixture(scope="module")
def checkpoint_path(mni, tmp_path_factory):
    config = TrainConfig(recipe="hagan", out_dir=tmp_path_factory.mktemp("run"), steps=2, device="cpu",
                         sample_every=0, settings=TINY)  # fmt: skip
    return list(train(config, [mni]))[-1].checkpoint


def test_hagan_trains_from_the_viewer_and_generates_synthetic_images(make_napari_viewer, qtbot, tmp_path, mni):
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(mni)
    source = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
    assert isinstance(widget, TrainWidget)
    qtbot.waitUntil(lambda: widget.ready, timeout=WAIT_MS)  # the recipes load in the background
    widget.data["layers"].value = [source]
    widget.recipe.value = "hagan"
    assert {"attnmix", "hierarchical", "reverse_skip", "diffaugment"} <= set(widget.settings.values())
    widget.settings.set_values(TINY)
    widget.device.value = "cpu"
    widget.out_dir.value = tmp_path / "run"
    for name, value in {"steps": 3, "log_every": 1, "sample_every": 3, "checkpoint_every": 1000}.items():
        widget.option(name).value = value

    widget.start_button.native.click()
    assert widget.run.state is RunState.RUNNING
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert widget.status.value == "completed at step 3"
    assert {"d_consistency", "d_mix", "d_pixel_real", "g_pixel"} <= set(widget.loss_plot.series)
    assert widget.preview_layer.name.endswith(SYNTHETIC_SUFFIX) and widget.preview_layer.data.shape == (8, 64, 64)
    np.testing.assert_allclose(widget.preview_layer.scale[1:], np.asarray(source.scale[1:]) * PIXEL_SCALE, rtol=1e-6)
    assert load_checkpoint(widget.checkpoint_path).recipe == "hagan"

    widget.num_samples.value = 4
    widget.generate_button.native.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=WAIT_MS)
    generated = viewer.layers[-1]
    assert generated.name.endswith(SYNTHETIC_SUFFIX) and generated.data.shape == (4, 64, 64)
    np.testing.assert_allclose(generated.scale, [1.0, *(np.asarray(source.scale[1:]) * PIXEL_SCALE)], rtol=1e-6)
    assert generated.metadata["medsynth"]["synthetic"]["model"] == "hagan"
    assert np.asarray(generated.data).max() > 1.5  # MR intensities of the template, not [-1, 1]


def test_the_generate_widget_draws_hagan_images_on_the_training_grid(make_napari_viewer, qtbot, mni, checkpoint_path):
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(mni)
    source = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Generate")
    assert isinstance(widget, GenerateWidget)
    widget.device = "cpu"
    widget.checkpoint_file.value = checkpoint_path
    assert widget.checkpoint_label.value == "hagan, step 2, 64 px" and widget.generate_button.enabled
    # a 2D recipe draws images at its training size: the sequence options are hidden
    hidden = [widget.option(name).native.isHidden() for name in ("modality", "frames", "resolution", "count", "seed")]
    assert hidden == [True, True, True, False, False]

    widget.options.set_values({"count": 3, "seed": 5})
    widget.generate_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.layer is not None, timeout=WAIT_MS)
    layer = widget.layer
    assert layer.name.endswith(SYNTHETIC_SUFFIX) and layer.data.shape == (3, 64, 64)
    provenance = layer.metadata["medsynth"]["synthetic"]
    assert provenance["model"] == "hagan" and provenance["seed"] == 5
    np.testing.assert_array_equal(layer.data, generate(checkpoint_path, 3, seed=5, device="cpu").array)
    np.testing.assert_allclose(layer.scale, [1.0, *(np.asarray(source.scale[1:]) * PIXEL_SCALE)], rtol=1e-6)
    assert widget.progress.value == widget.progress.max
