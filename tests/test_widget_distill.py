"""`distill` from the viewer: the Train widget distils a teacher checkpoint on a real MNI152 layer, refuses a
missing teacher naming the file, and the Generate widget draws the student's images on the training grid."""

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

WAIT_MS = 60_000
PIXEL_SCALE = 233 / 64  # the template's 233 x 197 mm axial slices are padded to 233 px and trained at 64 px


@pytest.fixture(scope="module")
def mni():
    """The MNI152 template's axial slices 70 to 89."""
    image = load_sample("mni152")
    return image.with_array(np.asarray(image.array[70:90]))


@pytest.fixture(scope="module")
def teacher(mni, tmp_path_factory):
    config = TrainConfig(recipe="dcgan", out_dir=tmp_path_factory.mktemp("teacher"), steps=2, device="cpu",
                         sample_every=0, settings={"batch_size": 4, "latent_dim": 16})  # fmt: skip
    return list(train(config, [mni]))[-1].checkpoint


def test_distill_trains_from_the_viewer_and_refuses_a_missing_teacher(
    make_napari_viewer, qtbot, tmp_path, mni, teacher, monkeypatch
):
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(mni)
    source = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
    assert isinstance(widget, TrainWidget)
    qtbot.waitUntil(lambda: "distill" in widget.recipe.choices, timeout=WAIT_MS)  # may load in the background
    widget.data["layers"].value = [source]
    widget.recipe.value = "distill"
    widget.device.value = "cpu"
    widget.out_dir.value = tmp_path / "runs"
    widget.options["steps"].value = 3
    errors = []
    monkeypatch.setattr("napari_medsynth.widgets.train.report_error", errors.append)

    widget.settings.set_values({"teacher": str(tmp_path / "gone.safetensors"), "batch_size": 4})
    widget.start_button.native.click()
    assert widget.run.worker is None and "gone.safetensors does not exist" in str(errors[-1])

    widget.settings.set_values({"teacher": str(teacher), "width_factor": 0.25, "temperature": 2.0})
    widget.start_button.native.click()
    assert widget.run.state is RunState.RUNNING
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert widget.status.value == "completed at step 3", errors
    assert {"pixel", "perceptual", "feature", "soft_discriminator", "hard"} <= set(widget.loss_plot.series)
    student = load_checkpoint(widget.checkpoint_path)
    assert student.recipe == "distill" and student.settings["temperature"] == 2.0

    _, generator = viewer.window.add_plugin_dock_widget("napari-medsynth", "Generate")
    assert isinstance(generator, GenerateWidget)
    generator.device = "cpu"
    generator.checkpoint_file.value = widget.checkpoint_path
    assert generator.checkpoint_label.value == "distill, step 3, 64 px" and generator.generate_button.enabled
    generator.options.set_values({"count": 3, "seed": 5})
    generator.generate_button.clicked.emit()
    qtbot.waitUntil(lambda: generator.layer is not None, timeout=WAIT_MS)
    layer = generator.layer
    assert layer.name.endswith(SYNTHETIC_SUFFIX) and layer.metadata["medsynth"]["synthetic"]["model"] == "distill"
    np.testing.assert_array_equal(layer.data, generate(widget.checkpoint_path, 3, seed=5, device="cpu").array)
    np.testing.assert_allclose(layer.scale, [1.0, *(np.asarray(source.scale[1:]) * PIXEL_SCALE)], rtol=1e-6)
