"""The Train widget with a real viewer, opened through the manifest, training on real sample data."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.errors import SettingsError, TrainingError
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import SEED_LIMIT, TrainConfig
from medsynth.training.events import Progress
from medsynth.training.recipe import list_recipes
from medsynth.training.trainer import train
from napari_medsynth.layers import SYNTHETIC_SUFFIX, layer_image, to_layer_data
from napari_medsynth.widgets.train import TrainWidget
from napari_medsynth.workers import BackgroundRun, Failed, RunState

pytestmark = pytest.mark.gui

# Small networks and batches, so that a step is quick on a 2-core CPU.
TINY = {"resolution": 64, "batch_size": 4, "latent_dim": 16, "g_channels": 8, "d_channels": 8}
WAIT_MS = 60_000


@pytest.fixture
def ct_layer_data():
    return to_layer_data(load_sample("ct_slice"))


def open_train(viewer, qtbot) -> TrainWidget:
    """The Train dock, opened through the manifest, once its recipes are loaded (in the background)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
    assert isinstance(widget, TrainWidget)
    qtbot.waitUntil(lambda: widget.ready, timeout=WAIT_MS)
    return widget


def open_widget(make_napari_viewer, qtbot, layer_data, tmp_path: Path, **options) -> tuple[object, TrainWidget, object]:
    viewer = make_napari_viewer()
    data, kwargs, _ = layer_data
    layer = viewer.add_image(data, **kwargs)
    widget = open_train(viewer, qtbot)
    widget.data["layers"].value = [layer]
    widget.recipe.value = "dcgan"
    widget.settings.set_values(TINY)
    widget.device.value = "cpu"
    widget.out_dir.value = tmp_path / "run"
    for name, value in {"steps": 10_000, "log_every": 1, "sample_every": 2, "checkpoint_every": 1000, **options}.items():
        widget.option(name).value = value
    return viewer, widget, layer


def shown(widget) -> bool:
    """Whether the widget shows once its window does (the test viewer's window stays hidden)."""
    return not widget.native.isHidden()


def checkpoints(parent: Path) -> list[Path]:
    """The checkpoints of the runs under the widget's output folder (each run has a folder of its own)."""
    return sorted(parent.glob("*/checkpoint-*.safetensors"))


@pytest.mark.slow
def test_start_shows_progress_losses_and_preview_pause_holds_it_then_stop_writes_checkpoint(
    make_napari_viewer, qtbot, tmp_path, ct_layer_data, in_view
):
    viewer, widget, source = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path)
    widget.start_button.native.click()
    assert widget.run.state is RunState.RUNNING
    assert not widget.start_button.enabled and widget.stop_button.enabled
    assert widget.run.worker is not None and widget.run.worker.control.is_shared
    # the preview layer is made on Start (adding a layer freezes the GUI briefly), hidden until samples come
    assert widget.preview_layer in viewer.layers and not widget.preview_layer.visible
    assert not widget.preview_layer.data.any()
    # the trainer runs in a child process; this process only relays its events
    qtbot.waitUntil(lambda: len(multiprocessing.active_children()) == 1, timeout=WAIT_MS)

    qtbot.waitUntil(lambda: widget.preview_layer.visible and len(widget.loss_plot.series.get("g_loss", ([],))[0]) >= 2, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=WAIT_MS)  # refreshed with the loss plot
    assert widget.progress.maximum() == 10_000
    assert "step" in widget.progress.text() and "left" in widget.progress.text()
    assert {"d_loss", "g_loss", "d_loss_real", "d_loss_fake"} <= set(widget.loss_plot.series)

    preview = widget.preview_layer
    assert preview.name.endswith(SYNTHETIC_SUFFIX) and preview.data.any()
    assert preview.data.shape == (8, 64, 64) and preview.axis_labels == ("sample", "y", "x")
    # beside the source, not over it, and in the view the widget reset to show both
    assert preview.extent.world[0, -1] > source.extent.world[1, -1]
    assert in_view(viewer, preview) and in_view(viewer, source)
    # the 128x128 CT slice is shown at 64x64, so the preview pixels are twice the source's size
    np.testing.assert_allclose(preview.scale[1:], np.asarray(source.scale) * 2, rtol=1e-6)
    assert preview.metadata["medsynth"]["units"] == "HU"
    assert [name for name, _ in widget._layer_choices(None)] == [source.name]  # never train on a preview
    n_layers = len(viewer.layers)
    first_data = np.array(preview.data)
    qtbot.waitUntil(lambda: not np.array_equal(widget.preview_layer.data, first_data), timeout=WAIT_MS)
    assert widget.preview_layer is preview and len(viewer.layers) == n_layers  # updated in place

    # pause and resume reach the training process
    widget.pause_button.native.click()
    assert widget.run.state is RunState.PAUSED and widget.pause_button.text == "Resume"
    qtbot.waitUntil(lambda: widget.status.value.startswith("paused at step"), timeout=WAIT_MS)
    held = len(widget.loss_plot.series["g_loss"][0])
    qtbot.wait(600)
    assert len(widget.loss_plot.series["g_loss"][0]) == held
    widget.pause_button.native.click()
    assert widget.run.state is RunState.RUNNING and widget.pause_button.text == "Pause"
    qtbot.waitUntil(lambda: len(widget.loss_plot.series["g_loss"][0]) >= held + 2, timeout=WAIT_MS)

    widget.stop_button.native.click()
    assert widget.run.state is RunState.STOPPING
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert widget.start_button.enabled
    assert not multiprocessing.active_children()
    saved = checkpoints(tmp_path / "run")
    assert saved and widget.checkpoint_path == saved[-1]
    run_name = saved[-1].parent.name  # the run's own folder, named by its start time and recipe
    assert run_name.endswith("_dcgan") and widget.checkpoint_label.value == f"checkpoint: {run_name}/{saved[-1].name}"
    checkpoint = load_checkpoint(saved[-1])
    assert checkpoint.step >= 4 and widget.status.value == f"stopped at step {checkpoint.step}"
    assert widget.progress.value() <= checkpoint.step  # the bar keeps the last step reported
    # previews are in data units (HU, inside the training intensity range), not the network's [-1, 1]
    low, high = checkpoint.normalization.low, checkpoint.normalization.high
    assert low - 1e-3 <= preview.data.min() and preview.data.max() <= high + 1e-3
    assert np.abs(preview.data).max() > 1.0


def test_bad_settings_or_no_data_are_a_notification_and_start_nothing(make_napari_viewer, qtbot, tmp_path, ct_layer_data, notifications):
    _, widget, _ = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path)
    widget.settings["lr_g"].value = "0"
    widget.settings["lr_d"].value = "fast"
    widget.start_button.native.click()
    assert widget.run.state is RunState.IDLE and widget.run.worker is None
    assert len(notifications) == 1
    assert "SettingsError" in notifications[0] and "lr_g" in notifications[0] and "lr_d" in notifications[0]

    widget.settings.set_values({"lr_g": 2e-4, "lr_d": 2e-4})
    widget.data["layers"].value = []
    widget.start()
    assert widget.run.worker is None
    assert len(notifications) == 2 and "select one or more image layers" in notifications[1]
    assert not (tmp_path / "run").exists()



def test_a_five_dimensional_layer_is_a_notification_and_starts_nothing(make_napari_viewer, qtbot, tmp_path, notifications):
    stack = np.zeros((2, 2, 3, 32, 32), dtype=np.float32)
    _, widget, _ = open_widget(make_napari_viewer, qtbot, (stack, {"name": "5d stack"}, "image"), tmp_path)
    widget.start_button.native.click()
    assert widget.run.state is RunState.IDLE and widget.run.worker is None
    assert len(notifications) == 1
    assert "InputError" in notifications[0] and "'5d stack' has 5 dimensions" in notifications[0]
    assert widget.preview_layer is None and not (tmp_path / "run").exists()


def test_run_options_take_exactly_the_values_the_core_accepts(make_napari_viewer, qtbot, tmp_path):
    widget = open_train(make_napari_viewer(), qtbot)
    seed = widget.option("seed")
    assert (seed.min, seed.max) == (0, SEED_LIMIT - 1)
    assert list(widget.option("slice_axis").choices) == [0, 1, 2]
    assert (widget.option("sample_every").min, widget.option("steps").min) == (0, 1)
    seed.value = seed.max
    widget.out_dir.value = tmp_path / "run"
    widget._config().validate()  # the largest seed the widget offers is one the trainer takes
    with pytest.raises(SettingsError, match=f"seed={SEED_LIMIT}: must be at most {SEED_LIMIT - 1}"):
        TrainConfig("dcgan", tmp_path, seed=seed.max + 1).validate()

def test_failure_in_training_is_a_notification_and_the_widget_returns_to_idle(make_napari_viewer, qtbot, tmp_path, notifications):
    ct = load_sample("ct_slice")
    constant = ct.with_array(np.full_like(ct.array, -1000), name="air")
    _, widget, _ = open_widget(make_napari_viewer, qtbot, to_layer_data(constant), tmp_path)
    widget.start()
    assert widget.run.state is RunState.RUNNING
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert any("InputError" in message and "constant" in message for message in notifications)
    assert widget.status.value == "failed: InputError" and widget.start_button.enabled


def test_a_runtime_error_from_the_trainer_reaches_the_gui_thread(qtbot):
    """superqt turns a RuntimeError raised by a generator into a mere warning; TrainingError is one."""
    received: list[tuple[object, int]] = []

    def failing(control):
        yield Progress(1, 2, {"g_loss": 1.0}, {}, 1.0, 1.0)
        raise TrainingError("loss is not finite")

    run = BackgroundRun()
    run.start(failing, lambda event: received.append((event, threading.get_ident())))
    qtbot.waitUntil(lambda: run.state is RunState.IDLE, timeout=WAIT_MS)
    assert [type(event) for event, _ in received] == [Progress, Failed]
    assert isinstance(received[1][0].error, TrainingError)
    assert {thread for _, thread in received} == {threading.main_thread().ident}


@pytest.fixture
def ct_checkpoint(tmp_path) -> Path:
    config = TrainConfig("dcgan", tmp_path / "core", settings=TINY, steps=2, device="cpu", sample_every=0, log_every=1)
    *_, finished = train(config, [load_sample("ct_slice")])
    return finished.checkpoint


def test_load_checkpoint_and_generate_add_a_synthetic_layer_with_the_training_spacing(
    make_napari_viewer, qtbot, tmp_path, ct_layer_data, ct_checkpoint, notifications, in_view
):
    viewer, widget, source = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    assert widget.load_checkpoint(broken) is None
    assert notifications and "CheckpointError" in notifications[0] and "broken.safetensors" in notifications[0]
    assert widget.checkpoint_path is None and not widget.generate_button.enabled

    widget.recipe.value = "wgan-gp"  # choosing a recipe renders its own settings
    assert "n_critic" in widget.settings.values() and "critic" in widget.recipe_help.value.lower()
    checkpoint = widget.load_checkpoint(ct_checkpoint)
    assert checkpoint is not None and checkpoint.step == 2
    assert widget.recipe.value == "dcgan" and "n_critic" not in widget.settings.values()
    assert widget.settings.values()["latent_dim"] == TINY["latent_dim"]
    assert widget.generate_button.enabled and widget.continue_button.enabled

    widget.num_samples.value = 5
    widget.generate_button.native.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=WAIT_MS)
    generated = viewer.layers[-1]
    assert generated.name.endswith(SYNTHETIC_SUFFIX)
    assert generated.data.shape == (5, 64, 64)
    np.testing.assert_allclose(generated.scale, [1.0, *(np.asarray(source.scale) * 2)], rtol=1e-6)
    assert generated.metadata["medsynth"]["synthetic"]["model"] == "dcgan"
    assert generated.metadata["medsynth"]["units"] == "HU"
    assert generated.extent.world[0, -1] > source.extent.world[1, -1] and in_view(viewer, generated)

    saved = widget.save_checkpoint(tmp_path / "copy.safetensors")
    assert saved == tmp_path / "copy.safetensors" and load_checkpoint(saved).step == 2


@pytest.mark.slow
def test_continue_training_from_a_loaded_checkpoint(make_napari_viewer, qtbot, tmp_path, ct_layer_data, ct_checkpoint):
    _, widget, _ = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path, steps=4, sample_every=0)
    widget.load_checkpoint(ct_checkpoint)
    widget.continue_button.native.click()
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert widget.status.value == "completed at step 4"
    assert [load_checkpoint(p).step for p in checkpoints(tmp_path / "run")] == [4]
    assert widget.loss_plot.series["g_loss"][0] == [3.0, 4.0]


@pytest.mark.slow
def test_closing_the_widget_while_training_stops_it_with_a_checkpoint(make_napari_viewer, qtbot, tmp_path, ct_layer_data):
    viewer, widget, _ = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path, sample_every=0)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.loss_plot.series.get("g_loss", ([],))[0]) >= 1, timeout=WAIT_MS)
    viewer.window.remove_dock_widget(widget)
    # removing returns only once the trainer has stopped and written its checkpoint
    assert widget.run.state is RunState.IDLE and widget.run.worker is None
    assert not multiprocessing.active_children()
    saved = checkpoints(tmp_path / "run")
    assert len(saved) == 1 and load_checkpoint(saved[0]).step >= 1


@pytest.mark.slow
def test_closing_the_viewer_while_training_stops_it_with_a_checkpoint(make_napari_viewer, qtbot, tmp_path, ct_layer_data):
    viewer, widget, _ = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path, sample_every=0)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.loss_plot.series.get("g_loss", ([],))[0]) >= 1, timeout=WAIT_MS)
    started = time.perf_counter()
    viewer.close()
    assert widget.run.worker is None and time.perf_counter() - started < 60
    assert not multiprocessing.active_children()
    assert len(checkpoints(tmp_path / "run")) == 1


def test_layers_reach_the_trainer_as_their_own_lazy_arrays(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    mni = load_sample("mni152")
    frames = da.stack([da.from_array(mni.array, chunks=(16, -1, -1))] * 3)  # (t, z, y, x), never computed
    layer = viewer.add_image(frames, name="mni152 x3", scale=[1.0, *mni.spacing])
    image = layer_image(layer)
    assert image.array is frames
    assert image.axes == "tzyx" and image.spacing == pytest.approx(mni.spacing)
    widget = open_train(viewer, qtbot)
    assert [name for name, _ in widget._layer_choices(None)] == [layer.name]


def test_recipe_list_offers_every_recipe_starting_with_the_dcgan_baseline(make_napari_viewer, qtbot):
    widget = open_train(make_napari_viewer(), qtbot)
    choices = set(widget.recipe.choices)
    assert widget.recipe.value == "dcgan"
    assert {"dcgan", "wgan-gp", "hrgan-dtcr", "danger-unet", "lesion-heatmap"} <= choices
    assert {info.name for info in list_recipes()} == choices
    # the target picker is there only for recipes trained on (image, target) pairs
    assert shown(widget.data["target"]) is False
    for name in ("danger-unet", "lesion-heatmap", "dcgan"):
        widget.recipe.value = name
        assert shown(widget.data["target"]) is (name != "dcgan")


def test_normalisation_control_becomes_the_configs_percentiles_or_window(
    make_napari_viewer, qtbot, tmp_path, ct_layer_data, notifications
):
    _, widget, _ = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path)
    form = widget.normalization
    assert form["normalization"].value == "percentile"
    assert shown(form["percentile_low"]) and not shown(form["window_center"])
    form["percentile_low"].value = "1"
    form["percentile_high"].value = "99"
    config = widget._config()
    assert (config.normalization, config.percentile_low, config.percentile_high) == ("percentile", 1.0, 99.0)

    form["normalization"].value = "window"
    assert shown(form["window_width"]) and not shown(form["percentile_high"])
    form["window_center"].value = "-600"
    form["window_width"].value = "1500"
    config = widget._config()
    assert (config.normalization, config.window_center, config.window_width) == ("window", -600.0, 1500.0)

    form["window_width"].value = "0"
    widget.start()
    assert widget.run.worker is None
    assert len(notifications) == 1 and "SettingsError" in notifications[0] and "window_width" in notifications[0]
    form["window_width"].value = "1500"
    form["normalization"].value = "percentile"
    form["percentile_low"].value = "99.9"
    widget.start()
    assert widget.run.worker is None
    assert len(notifications) == 2 and "percentile_low=99.9 must be below percentile_high=99.0" in notifications[1]
    assert not (tmp_path / "run").exists()


PAIRED_TINY = {"resolution": 32, "batch_size": 2, "width": 4, "depth": 1}


@pytest.mark.slow
def test_a_paired_recipe_trains_on_an_image_layer_with_its_labels_layer(
    make_napari_viewer, qtbot, tmp_path, ct_layer_data, notifications
):
    viewer, widget, image_layer = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path, steps=3, sample_every=0)
    widget.recipe.value = "danger-unet"
    widget.settings.set_values(PAIRED_TINY)
    widget.normalization["normalization"].value = "window"  # the CT slice is in HU: a soft-tissue window
    widget.start()
    assert widget.run.worker is None
    assert len(notifications) == 1 and "no target layer" in notifications[0] and "Labels" in notifications[0]

    body = (np.asarray(image_layer.data) > -500).astype(np.uint8)  # the patient, not the air around
    viewer.add_labels(body, name="body", scale=image_layer.scale)
    widget.reset_choices()
    assert widget.data["target"].value is viewer.layers["body"]
    widget.start_button.native.click()
    assert widget.run.state is RunState.RUNNING
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert len(notifications) == 1, notifications
    assert widget.status.value == "completed at step 3"
    assert widget.loss_plot.series["bce"][0] == [1.0, 2.0, 3.0]
    checkpoint = load_checkpoint(widget.checkpoint_path)
    assert checkpoint.recipe == "danger-unet" and checkpoint.step == 3
    assert (checkpoint.normalization.low, checkpoint.normalization.high) == (-160.0, 240.0)


HRGAN_TINY = {"resolution": 32, "base_resolution": 16, "frames": 4, "batch_size": 2, "g_channels": 4, "d_channels": 4,
              "content_dim": 8, "motion_dim": 4}  # fmt: skip
READOUTS = {"dtcr_weight", "fade_alpha", "stage_resolution"}


@pytest.mark.slow
def test_hrgan_dtcr_without_vgg_weights_trains_with_readouts_apart_and_previews_in_step_with_the_cine(
    make_napari_viewer, qtbot, tmp_path, no_weights, in_view, notifications
):
    cine = load_sample("us_cine")
    cine = cine.with_array(cine.array[:16, ::8, ::8].copy(), spacing=tuple(8 * s for s in cine.spacing))
    viewer, widget, source = open_widget(make_napari_viewer, qtbot, to_layer_data(cine), tmp_path, sample_every=1)
    assert "vgg16: not found" in widget.weights.text()  # what `medsynth info` reports
    widget.recipe.value = "hrgan-dtcr"
    assert widget.settings.values()["dtcr_features"] == "discriminator"  # the weight-free features, said so
    assert shown(widget.recipe_note) and "vgg16-397923af.pth not found" in widget.recipe_note.value
    widget.settings.set_values(HRGAN_TINY)

    widget.start_button.native.click()
    qtbot.waitUntil(lambda: widget.preview_layer.visible and shown(widget.readout), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: len(widget.loss_plot.series.get("g_loss", ([],))[0]) >= 2, timeout=WAIT_MS)
    widget.stop_button.native.click()
    qtbot.waitUntil(lambda: widget.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert not notifications, notifications

    # losses only in the plot, schedule and stage values in their own line, the legend under the curves
    assert "g_loss" in widget.loss_plot.series and not READOUTS & set(widget.loss_plot.series)
    assert all(name in widget.readout.value for name in READOUTS)
    widget.loss_plot.canvas.draw()
    legend, axes = widget.loss_plot.figure.legends[0].get_window_extent(), widget.loss_plot.axes.get_window_extent()
    assert legend.y1 <= axes.y0

    # the preview is laid out like Generate's sequences: samples first, time on the cine's slider at its frame time
    preview = widget.preview_layer
    assert preview.axis_labels == ("sample", "t", "y", "x") and preview.data.shape[1] == 4
    assert preview.scale[1] == pytest.approx(source.scale[0]) == pytest.approx(33.333)
    assert in_view(viewer, preview)
    viewer.dims.set_point(1, 2 * source.scale[0])  # world axis 1: the cine's time, the preview's too
    assert round(source.world_to_data(viewer.dims.point)[0]) == 2
    assert round(preview.world_to_data(viewer.dims.point)[1]) == 2


def test_reset_defaults_puts_every_setting_back(make_napari_viewer, qtbot, tmp_path, ct_layer_data):
    _, widget, _ = open_widget(make_napari_viewer, qtbot, ct_layer_data, tmp_path, steps=7, seed=3)
    widget.recipe.value = "wgan-gp"
    widget.settings["n_critic"].value = 2
    widget.normalization["normalization"].value = "window"
    widget.device.value = "cpu"

    widget.reset_defaults()

    assert widget.recipe.value == "dcgan" and "n_critic" not in widget.settings.values()
    assert widget.option("steps").value == 2000 and widget.option("seed").value == 0
    assert widget.normalization["normalization"].value == "percentile"
    assert widget.device.value == "auto" and widget.out_dir.value == Path.home() / "medsynth-runs"
    config = widget._config()
    assert (config.recipe, config.steps, config.seed, config.normalization) == ("dcgan", 2000, 0, "percentile")
