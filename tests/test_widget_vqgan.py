"""The VQGAN recipes in the viewer: listed and configured by the Train widget, generating from the Train and
Generate widgets, and the Generate widget's reconstruction view (input | reconstruction | difference)."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.training.config import TrainConfig
from medsynth.training.trainer import check_config, train
from napari_medsynth.layers import SYNTHETIC_SUFFIX, to_layer_data
from napari_medsynth.widgets.generate import GenerateWidget
from napari_medsynth.widgets.train import TrainWidget

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TINY = {"resolution": 32, "batch_size": 2, "base_channels": 8, "channel_mult": "1,1,2,2", "codebook_size": 16,
        "codebook_dim": 8, "perceptual": "discriminator", "disc_channels": 8, "autoencoder_steps": 2,
        "prior_steps": 1, "prior_dim": 16, "prior_layers": 1, "prior_heads": 2}  # fmt: skip
WAIT_MS = 60_000


def shown(widget) -> bool:
    """Whether the widget shows once its window does (the test viewer's window stays hidden)."""
    return not widget.native.isHidden()


@pytest.fixture(scope="module")
def ct():
    return load_sample("ct_slice")


@pytest.fixture(scope="module")
def checkpoint(ct, tmp_path_factory):
    config = TrainConfig(recipe="vqgan-hdfb", out_dir=tmp_path_factory.mktemp("run"), sample_every=0, settings=TINY)
    return list(train(config, [ct]))[-1].checkpoint


def test_train_widget_lists_both_recipes_renders_their_settings_and_generates(
    make_napari_viewer, qtbot, ct, checkpoint, tmp_path
):
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(ct)
    source = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
    assert isinstance(widget, TrainWidget)
    qtbot.waitUntil(lambda: widget.ready, timeout=WAIT_MS)  # the recipes load in the background
    assert {"vqgan-hdfb", "vqgan"} <= set(widget.recipe.choices)
    widget.recipe.value = "vqgan"
    assert widget.settings.values()["block"] == "resblock" and "HDFB" not in widget.recipe_help.value
    widget.recipe.value = "vqgan-hdfb"
    assert widget.settings.values()["block"] == "hdfb" and "dual-path fusion" in widget.recipe_help.value
    widget.settings.set_values(TINY)
    widget.out_dir.value = tmp_path
    widget.data["layers"].value = [source]
    recipe_cls, settings, _ = check_config(widget._config())  # what Start validates before training
    assert recipe_cls.name == "vqgan-hdfb" and settings.codebook_size == 16

    assert widget.load_checkpoint(checkpoint) is not None
    widget.num_samples.value = 3
    widget.generate_button.native.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=WAIT_MS)
    generated = viewer.layers[-1]
    assert generated.name.endswith(SYNTHETIC_SUFFIX) and generated.data.shape == (3, 32, 32)
    assert generated.metadata["medsynth"]["synthetic"]["model"] == "vqgan-hdfb"


def test_generate_widget_generates_2d_images_and_shows_reconstructions_on_the_inputs_grid(
    make_napari_viewer, qtbot, ct, checkpoint
):
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(ct)
    source = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Generate")
    assert isinstance(widget, GenerateWidget)
    widget.device = "cpu"
    assert not shown(widget.reconstruction)  # no autoencoder loaded yet
    widget.checkpoint_file.value = checkpoint
    assert shown(widget.reconstruction) and not shown(widget.options["frames"])
    widget.options.set_values({"count": 2, "seed": 3})
    widget.generate_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.layer is not None, timeout=WAIT_MS)
    assert widget.layer.data.shape == (2, 32, 32) and widget.layer.name.endswith(SYNTHETIC_SUFFIX)
    qtbot.waitUntil(lambda: widget.generate_button.enabled, timeout=WAIT_MS)

    assert widget.source.value is source
    widget.reconstruct_button.clicked.emit()
    qtbot.waitUntil(lambda: len(viewer.layers) == 4, timeout=WAIT_MS)
    reconstruction, difference = viewer.layers[-2], viewer.layers[-1]
    for layer in (reconstruction, difference):
        assert layer.data.shape == source.data.shape and layer.name.endswith(SYNTHETIC_SUFFIX)
        np.testing.assert_allclose(layer.scale, source.scale)
        np.testing.assert_allclose(layer.translate, source.translate)
    np.testing.assert_allclose(difference.data, reconstruction.data - source.data, atol=1e-3)
    assert viewer.canvas.grid.enabled  # input | reconstruction | difference side by side
