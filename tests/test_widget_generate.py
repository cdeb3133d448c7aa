"""The Generate widget, opened through the manifest, turning a checkpoint trained on the real cine into 4D layers."""

from __future__ import annotations

import numpy as np
import pytest

import medsynth.training.recipes.hrgan_dtcr  # noqa: F401 - registers the recipe
from medsynth.data.samples import load_sample
from medsynth.training.config import TrainConfig
from medsynth.training.trainer import train
from napari_medsynth.layers import SYNTHETIC_SUFFIX, to_layer_data
from napari_medsynth.widgets.generate import GenerateWidget

pytestmark = [pytest.mark.gui, pytest.mark.slow]

WAIT_MS = 60_000


@pytest.fixture(scope="module")
def cine():
    image = load_sample("us_cine")
    return image.with_array(image.array[:16, ::8, ::8].copy(), spacing=tuple(8 * s for s in image.spacing))


@pytest.fixture(scope="module")
def checkpoint_path(cine, tmp_path_factory):
    settings = {"resolution": 32, "base_resolution": 16, "frames": 4, "batch_size": 2, "g_channels": 4,
                "d_channels": 4, "content_dim": 8, "motion_dim": 4, "dtcr_features": "discriminator"}  # fmt: skip
    config = TrainConfig(recipe="hrgan-dtcr", out_dir=tmp_path_factory.mktemp("run"), steps=2, device="cpu",
                         sample_every=0, settings=settings)  # fmt: skip
    finished = list(train(config, [cine]))[-1]
    return finished.checkpoint


def open_widget(make_napari_viewer, cine):
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(cine)
    real = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Generate")
    assert isinstance(widget, GenerateWidget)
    widget.device = "cpu"
    return viewer, widget, real


def test_generated_sequences_become_a_4d_layer_with_a_time_slider(make_napari_viewer, qtbot, cine, checkpoint_path):
    viewer, widget, real = open_widget(make_napari_viewer, cine)
    assert not widget.generate_button.enabled  # nothing to generate from yet
    widget.checkpoint_file.value = checkpoint_path
    assert widget.options.values()["frames"] == 4 and widget.options.values()["resolution"] == 32
    assert widget.generate_button.enabled

    widget.options.set_values({"frames": 6, "count": 2, "resolution": 64, "seed": 7})
    widget.generate_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.layer is not None, timeout=WAIT_MS)

    layer = widget.layer
    assert layer.name.endswith(SYNTHETIC_SUFFIX)
    assert layer.data.shape == (6, 2, 64, 64)
    assert layer.metadata["medsynth"]["synthetic"]["seed"] == 7
    assert viewer.dims.ndim == 4 and viewer.dims.nsteps[0] >= 6
    assert 0 in viewer.dims.not_displayed  # time is a slider, not a displayed axis
    assert widget.progress.value == widget.progress.max == 12
    # The synthetic pixels cover the same field of view as the real frames' longer side.
    assert layer.scale[-1] * 64 == pytest.approx(real.scale[-1] * 80)
    viewer.dims.set_current_step(0, 5)
    assert not np.allclose(layer.data[5], layer.data[0])

    widget.side_by_side.value = True
    assert viewer.canvas.grid.enabled
    widget.side_by_side.value = False
    assert not viewer.canvas.grid.enabled


def test_a_bad_checkpoint_file_is_reported_not_raised(make_napari_viewer, tmp_path, cine):
    from napari.utils.notifications import notification_manager

    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    try:
        _, widget, _ = open_widget(make_napari_viewer, cine)
        bad = tmp_path / "broken.safetensors"
        bad.write_bytes(b"not a checkpoint")
        widget.checkpoint_file.value = bad
    finally:
        notification_manager.notification_ready.disconnect()
    assert widget.checkpoint is None and not widget.generate_button.enabled
    assert any("not a medsynth checkpoint" in message for message in seen)
