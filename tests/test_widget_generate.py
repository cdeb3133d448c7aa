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


def test_two_generated_sequences_share_the_time_slider_with_the_cine_and_show_beside_it(
    make_napari_viewer, qtbot, cine, checkpoint_path, in_view
):
    viewer, widget, real = open_widget(make_napari_viewer, cine)
    assert not widget.generate_button.enabled  # nothing to generate from yet
    widget.checkpoint_file.value = checkpoint_path
    assert widget.options.values()["frames"] == 4 and widget.advanced_options.values()["resolution"] == 32
    assert widget.generate_button.enabled

    widget.options.set_values({"frames": 6, "count": 2, "seed": 7})
    widget.advanced_options.set_values({"resolution": 64})
    widget.generate_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.layer is not None, timeout=WAIT_MS)

    layer = widget.layer
    assert layer.name.endswith(SYNTHETIC_SUFFIX)
    assert layer.data.shape == (2, 6, 64, 64) and layer.axis_labels == ("sample", "t", "y", "x")
    assert viewer.dims.axis_labels == ("sample", "t", "y", "x")
    assert layer.metadata["medsynth"]["synthetic"]["seed"] == 7
    assert widget.progress.value == widget.progress.max == 12
    # The synthetic pixels cover the same field of view as the real frames' longer side.
    assert layer.scale[-1] * 64 == pytest.approx(real.scale[-1] * 80)
    # beside the cine, in view, at the first frame and the first sample
    assert layer.extent.world[0, -1] > real.extent.world[1, -1]
    assert in_view(viewer, layer) and in_view(viewer, real)
    # one time slider for both: frame k of the cine and of each sequence at the same slider position
    assert layer.scale[1] == pytest.approx(real.scale[0]) == pytest.approx(33.333)
    assert viewer.dims.nsteps[1] == 16  # the cine's frames, not the samples
    for frame in (0, 5):
        viewer.dims.set_point(1, frame * real.scale[0])
        assert round(real.world_to_data(viewer.dims.point)[0]) == frame
        assert round(layer.world_to_data(viewer.dims.point)[1]) == frame
    viewer.dims.set_point(0, 1)  # the sample slider
    assert round(layer.world_to_data(viewer.dims.point)[0]) == 1
    assert not np.allclose(layer.data[0, 5], layer.data[0, 0])

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


def test_reset_defaults_keeps_the_checkpoints_own_values(make_napari_viewer, cine, checkpoint_path):
    _, widget, _ = open_widget(make_napari_viewer, cine)
    widget.checkpoint_file.value = checkpoint_path
    widget.options.set_values({"frames": 9, "count": 3, "seed": 5})
    widget.advanced_options.set_values({"resolution": 64, "modality": "MR"})
    widget.reset_defaults()
    assert widget.options.values() == {"frames": 4, "count": 1, "seed": 0}
    assert widget.advanced_options.values() == {"modality": "US", "resolution": 32}
