"""Two-domain recipes in the docks, with real viewers: the Train dock's domain-B layers and the Generate dock's
Translate section, on a tiny cyclegan trained on real MR (MNI152) and CT slices, and a tiny kgan-fusion (2 inputs)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QLabel

from medsynth.data.domains import TwoDomains
from medsynth.data.samples import load_sample
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.trainer import train
from napari_medsynth.layers import SYNTHETIC_SUFFIX, to_layer_data
from napari_medsynth.widgets.dock import MAX_MIN_HEIGHT_PX
from napari_medsynth.widgets.generate import GenerateWidget
from napari_medsynth.workers import RunState

pytestmark = pytest.mark.gui

WAIT_MS = 60_000
TINY = {"resolution": 32, "batch_size": 2, "g_channels": 8, "blocks": 2, "d_channels": 8}


@pytest.fixture(scope="module")
def mr():
    """Ten axial slices of the MNI152 T1 template at 4 mm, as MR (domain A)."""
    image = load_sample("mni152")
    array = np.ascontiguousarray(image.array[60:100:4, ::4, ::4], dtype=np.float32)
    return image.with_array(array, spacing=tuple(4 * s for s in image.spacing), modality="MR", name="t1")


@pytest.fixture(scope="module")
def ct():
    """The CT slice pydicom ships, in HU (domain B)."""
    return load_sample("ct_slice")


@pytest.fixture(scope="module")
def cyclegan_checkpoint(tmp_path_factory, mr, ct):
    config = TrainConfig(recipe="cyclegan", out_dir=tmp_path_factory.mktemp("cyclegan"), steps=3, device="cpu",
                         sample_every=0, settings=TINY)  # fmt: skip
    return list(train(config, TwoDomains(a=[mr], b=[ct])))[-1].checkpoint


@pytest.fixture(scope="module")
def dcgan_checkpoint(tmp_path_factory, ct):
    settings = {"resolution": 64, "batch_size": 2, "latent_dim": 16, "g_channels": 4, "d_channels": 4}
    config = TrainConfig(recipe="dcgan", out_dir=tmp_path_factory.mktemp("dcgan"), steps=1, device="cpu",
                         sample_every=0, settings=settings)  # fmt: skip
    return list(train(config, [ct]))[-1].checkpoint


@pytest.fixture(scope="module")
def fusion_checkpoint(tmp_path_factory, mr):
    """A tiny kgan-fusion teacher (2 inputs) on the MR and a tissue map on its grid."""
    grey_matter = mr.with_array((np.asarray(mr.array) > 60).astype(np.float32), modality="OT", name="map")
    settings = {"resolution": 32, "batch_size": 2, "width": 8, "depth": 2, "d_channels": 4}
    config = TrainConfig(recipe="kgan-fusion", out_dir=tmp_path_factory.mktemp("fusion"), steps=2, device="cpu",
                         sample_every=0, settings=settings)  # fmt: skip
    return list(train(config, TwoDomains(a=[mr], b=[grey_matter])))[-1].checkpoint


def open_generate(make_napari_viewer, *images):
    viewer = make_napari_viewer()
    layers = [viewer.add_layer(_layer(image)) for image in images]
    dock, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Generate")
    assert isinstance(widget, GenerateWidget)
    widget.device = "cpu"
    return viewer, dock, widget, layers


def _layer(image):
    from napari.layers import Layer

    return Layer.create(*to_layer_data(image))


def shown(widget) -> bool:
    """Whether a magicgui widget shows once its window does (the test viewer's window stays hidden)."""
    return not widget.native.isHidden()


def translate_and_wait(widget, qtbot) -> None:
    widget.translate_button.native.click()
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)


# -- Generate: the Translate section -----------------------------------------------------------


def test_translate_section_shows_only_for_two_domain_checkpoints(
    make_napari_viewer, qtbot, mr, cyclegan_checkpoint, dcgan_checkpoint
):
    _, dock, widget, _ = open_generate(make_napari_viewer, mr)
    assert not shown(widget.translation)
    widget.checkpoint_file.value = dcgan_checkpoint
    assert not shown(widget.translation) and shown(widget.options) and shown(widget.generate_controls)

    widget.checkpoint_file.value = cyclegan_checkpoint
    assert shown(widget.translation) and not shown(widget.options) and not shown(widget.generate_controls)
    assert widget.checkpoint_label.value.endswith("A: MR and B: CT")
    assert widget.direction.choices == ("a2b", "b2a") and widget.direction.value == "a2b"
    a, b = widget.translate_inputs.values()
    assert shown(a) and not shown(b) and a.label == "input (A: MR)"
    assert "input (A: MR)" in [label.text() for label in widget.translation.native.findChildren(QLabel)]
    assert "B: CT" in widget.direction.tooltip
    widget.direction.value = "b2a"
    assert a.label == "input (B: CT)" and not shown(b)
    assert widget.translate_button.enabled
    assert dock.minimumSizeHint().height() <= MAX_MIN_HEIGHT_PX

    widget.checkpoint_file.value = dcgan_checkpoint  # back to a generator: the options return
    assert not shown(widget.translation) and shown(widget.options)


def test_translate_adds_a_synthetic_layer_on_the_input_grid_in_the_other_units(
    make_napari_viewer, qtbot, mr, ct, cyclegan_checkpoint, notifications, in_view
):
    viewer, _, widget, (mr_layer, ct_layer) = open_generate(make_napari_viewer, mr, ct)
    widget.checkpoint_file.value = cyclegan_checkpoint
    widget.translate_inputs["a"].value = mr_layer
    translate_and_wait(widget, qtbot)
    assert not notifications, notifications
    to_ct = widget.translated
    assert to_ct in viewer.layers and len(viewer.layers) == 3
    assert to_ct.data.shape == mr_layer.data.shape
    np.testing.assert_allclose(to_ct.scale, mr_layer.scale)
    np.testing.assert_allclose(to_ct.translate, mr_layer.translate)
    np.testing.assert_allclose(to_ct.affine.affine_matrix, mr_layer.affine.affine_matrix)
    assert to_ct.name == f"cyclegan a2b of t1{SYNTHETIC_SUFFIX}"
    described = to_ct.metadata["medsynth"]
    assert described["synthetic"]["model"] == "cyclegan" and (described["modality"], described["units"]) == ("CT", "HU")
    assert in_view(viewer, to_ct)
    assert widget.progress.value == widget.progress.max == 1

    widget.direction.value = "b2a"
    widget.translate_inputs["a"].value = ct_layer
    translate_and_wait(widget, qtbot)
    to_mr = widget.translated
    assert to_mr.data.shape == ct_layer.data.shape and to_mr.metadata["medsynth"]["modality"] == "MR"
    np.testing.assert_allclose(to_mr.scale, ct_layer.scale)
    assert not notifications


def test_a_layer_medsynth_cannot_slice_is_a_notification_and_the_viewer_survives(
    make_napari_viewer, qtbot, mr, cyclegan_checkpoint, notifications
):
    viewer, _, widget, _ = open_generate(make_napari_viewer, mr)
    stack = viewer.add_image(np.zeros((2, 2, 3, 32, 32), dtype=np.float32), name="5d stack")
    widget.checkpoint_file.value = cyclegan_checkpoint
    widget.reset_choices()
    widget.translate_inputs["a"].value = stack
    widget.translate_button.native.click()
    assert widget.run.state is RunState.IDLE and widget.run.worker is None
    assert len(notifications) == 1 and "'5d stack' has 5 dimensions" in notifications[0]
    assert widget.translated is None and len(viewer.layers) == 2
    # The dock still works: a proper input translates.
    widget.translate_inputs["a"].value = viewer.layers["t1"]
    translate_and_wait(widget, qtbot)
    assert widget.translated is not None and len(notifications) == 1


def test_a_two_input_recipe_labels_each_input_by_domain_and_refuses_inputs_on_different_grids(
    make_napari_viewer, qtbot, mr, ct, fusion_checkpoint, notifications
):
    viewer, _, widget, (mr_layer, ct_layer) = open_generate(make_napari_viewer, mr, ct)
    widget.checkpoint_file.value = fusion_checkpoint
    assert widget.direction.choices == ("fuse",)
    a, b = widget.translate_inputs.values()
    assert shown(a) and shown(b) and (a.label, b.label) == ("input (A: MR)", "input (B: OT)")
    a.value, b.value = mr_layer, ct_layer
    translate_and_wait(widget, qtbot)
    assert len(notifications) == 1 and "is not on the grid of 't1'" in notifications[0], notifications
    assert widget.translated is None and len(viewer.layers) == 2
    assert widget.progress.max == 1  # not left busy

    grey_matter = viewer.add_image((np.asarray(mr_layer.data) > 60).astype(np.float32), name="map",
                                   scale=mr_layer.scale, translate=mr_layer.translate)  # fmt: skip
    widget.reset_choices()
    b.value = grey_matter
    translate_and_wait(widget, qtbot)
    assert widget.translated.data.shape == mr_layer.data.shape and len(notifications) == 1
    assert load_checkpoint(fusion_checkpoint).recipe == "kgan-fusion"
    fused = widget.translated
    assert fused.name == f"kgan-fusion fuse of t1{SYNTHETIC_SUFFIX}"
    assert fused.metadata["medsynth"]["synthetic"]["model"] == "kgan-fusion"
    np.testing.assert_allclose(fused.affine.affine_matrix, mr_layer.affine.affine_matrix)


# -- Train: the domain-B layers ----------------------------------------------------------------


@pytest.mark.slow
def test_train_dock_trains_a_two_domain_recipe_on_domain_a_and_domain_b_layers(
    make_napari_viewer, qtbot, tmp_path, mr, ct, notifications
):
    viewer = make_napari_viewer()
    mr_layer, ct_layer = viewer.add_layer(_layer(mr)), viewer.add_layer(_layer(ct))
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
    qtbot.waitUntil(lambda: widget.ready, timeout=WAIT_MS)
    assert not shown(widget.data["layers_b"])
    widget.recipe.value = "cyclegan"
    assert shown(widget.data["layers_b"]) and widget.data["layers"].label == "domain A"
    widget.settings.set_values(TINY)
    widget.device.value = "cpu"
    widget.out_dir.value = tmp_path / "runs"
    for name, value in {"steps": 3, "log_every": 1, "sample_every": 3}.items():
        widget.option(name).value = value
    widget.data["layers"].value = [mr_layer]
    widget.start()
    assert widget.run.worker is None and len(notifications) == 1
    assert "no domain-B layer is selected" in notifications[0]

    widget.data["layers_b"].value = [ct_layer]
    widget.start_button.native.click()
    assert widget.run.state is RunState.RUNNING
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert len(notifications) == 1, notifications
    assert widget.status.value == "completed at step 3"
    checkpoint = load_checkpoint(widget.checkpoint_path)
    assert checkpoint.recipe == "cyclegan" and checkpoint.data["b"]["units"] == "HU"
    assert checkpoint.data["images"][0]["shape"] == list(mr.array.shape)
    # Previews translate A to B: CT layers in HU, placed beside the CT layer.
    preview = widget.preview_layer
    assert preview.data.shape == (8, 32, 32) and preview.metadata["medsynth"]["units"] == "HU"
    assert preview.extent.world[0, -1] > ct_layer.extent.world[1, -1]
    # Nothing to draw from noise: the dock points to the Generate dock's Translate section instead.
    assert not shown(widget.generate_button) and shown(widget.translate_note)

    widget.recipe.value = "dcgan"
    assert not shown(widget.data["layers_b"]) and widget.data["layers"].label == "layers"
    assert shown(widget.generate_button) and not shown(widget.translate_note)
