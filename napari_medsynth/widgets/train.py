"""The Train dock widget: pick image layers and a recipe, train in a child process, watch losses and samples.

The widget is thin. Widget values become a `TrainConfig` in `_config()` only; the trainer receives
that config and the layers' arrays, never the widgets. Training runs in a child process
(`medsynth.training.process.train_in_process`), so its Python code never holds the viewer's GIL;
the layers' data reaches the child once, at Start (memory maps are reopened there, large arrays
shared: `medsynth.training.shared_arrays`). The plugin's background runner
(`napari_medsynth.workers.BackgroundRun`) relays the child's events to `_on_event` on the GUI thread,
the only place that touches layers, the plot and the progress bar, and knows whether training is
idle, running, paused or stopping, which the buttons observe. Generation from a checkpoint has a
runner of its own, so it may run while training goes on. Closing the widget or the viewer stops
training and waits for its checkpoint.

Recipes of the data kinds in `TARGET_DATA_KINDS` train on an image with its target map: the widget
then shows a Labels-layer picker and hands the trainer an ``(image, target)`` pair.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Select, SpinBox
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QFileDialog, QProgressBar, QVBoxLayout, QWidget

import medsynth
from medsynth.data.normalization import NORMALIZATION_FIELDS, NormalizationOptions
from medsynth.errors import InputError, MedsynthError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medsynth.training.config import RunOptions, TrainConfig
from medsynth.training.events import CheckpointSaved, Finished, Paused, Progress, Resumed, Samples, Started
from medsynth.training.generate import generate
from medsynth.training.process import train_in_process
from medsynth.training.recipe import TARGET_DATA_KINDS, list_recipes
from medsynth.training.runs import run_folder
from medsynth.training.trainer import check_config
from napari_medsynth.layers import SYNTHETIC_SUFFIX, layer_image, to_layer_data
from napari_medsynth.notify import report_error
from napari_medsynth.widgets.plot import LinePlot
from napari_medsynth.widgets.settings_form import SettingsForm
from napari_medsynth.workers import TRAIN_THREADS, BackgroundRun, EventWorker, Failed, RunState, call, warm_up_torch

if TYPE_CHECKING:
    import napari

DEFAULT_RECIPE = "dcgan"
SHUTDOWN_TIMEOUT_S = 120.0
"""How long closing waits for the trainer to finish its step and write the checkpoint."""
PROGRESS_REFRESH_MS = 3000
"""Loss points and steps arriving within this time are shown together, in one redraw of the loss plot
and the progress bar (step and ETA): a matplotlib redraw costs the GUI thread 60 to 120 ms on a busy
2-core machine, and a progress bar repaints synchronously on each new value."""
PREVIEW_REFRESH_MS = 3000
"""At most one preview update per this time (the latest samples win): each update costs the GUI thread
30 to 100 ms of layer refresh and repaint, and fast training sends samples several times a second."""


def available_devices() -> list[str]:
    """``auto``, ``cpu`` and the accelerators torch can use here."""
    import torch

    devices = ["auto", "cpu"] + [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    return devices + (["mps"] if torch.backends.mps.is_available() else [])


def preview_image(event: Samples, recipe: str, source: MedImage) -> MedImage:
    """Preview samples ``(N, H, W)`` (or ``(N, T, H, W)``) as a synthetic image in the source's units."""
    axes = "zyx" if event.images.ndim == 3 else "tzyx"
    spacing = (1.0, *(event.spacing or (1.0, 1.0)))
    provenance = SyntheticProvenance(recipe, medsynth.__version__, description=f"training preview, step {event.step}")
    return MedImage(
        array=event.images,
        axes=axes,
        spacing=spacing,
        modality=source.modality,
        units=source.units,
        name=f"{recipe} preview",
        synthetic=provenance,
    )


def placeholder_samples(data_kind: str, settings: Any, n: int) -> Samples | None:
    """Zero samples of the shape a recipe's previews will have; None when the data decides it (lesion crops)."""
    if not hasattr(settings, "resolution"):
        return None
    side = int(settings.resolution)
    shape = (n, int(settings.frames), side, side) if data_kind == "sequence" else (n, side, side)
    return Samples(step=0, images=np.zeros(shape, dtype=np.float32))


class TrainWidget(QWidget):
    """Train a recipe on image layers; see the module docstring."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        warm_up_torch()
        self.viewer = napari_viewer
        self.run = BackgroundRun(self)
        self.generation = BackgroundRun(self)
        self.preview_layer: Image | None = None
        self.checkpoint_path: Path | None = None
        self._recipes = {info.name: info for info in list_recipes()}
        self._source: MedImage | None = None
        self._watched_window: QWidget | None = None

        self.data = Container(
            widgets=[
                Select(name="layers", choices=self._layer_choices, tooltip="Image layers to train on"),
                ComboBox(
                    name="target",
                    choices=self._target_choices,
                    tooltip="Labels layer on the image's grid: the map this recipe learns to predict",
                ),
            ],
            label="Data",
        )
        self.recipe = ComboBox(name="recipe", choices=list(self._recipes), value=DEFAULT_RECIPE, tooltip="Model recipe")
        self._recipe_name = self.recipe.value
        self.recipe_help = Label(value=self._recipes[self._recipe_name].description)
        self.settings = SettingsForm(self._recipes[self._recipe_name].settings_cls)
        self.options = SettingsForm(RunOptions)
        self.normalization = SettingsForm(NormalizationOptions, label="Normalisation")
        self.device = ComboBox(name="device", choices=available_devices(), tooltip="Where to train")
        self.out_dir = FileEdit(name="output_folder", mode="d", value=Path.home() / "medsynth-runs")
        setup = [self.recipe, self.recipe_help, self.settings, self.options, self.normalization, self.device, self.out_dir]
        self.setup = Container(widgets=setup)

        self.start_button = PushButton(text="Start")
        self.pause_button = PushButton(text="Pause")
        self.stop_button = PushButton(text="Stop")
        self.status = Label(value="idle")
        # The widget's own bar, not napari's `progress`: while one is open, napari's status bar plays
        # an animated GIF whose repaints made the viewer's event loop late by 30 to 50 ms at every
        # turn during training (docs/benchmarks.md, "Responsiveness").
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setFormat("no run yet")
        self.controls = Container(widgets=[self.start_button, self.pause_button, self.stop_button], layout="horizontal", labels=False)
        self.loss_plot = LinePlot(title="Losses", ylabel="loss")

        self.save_button = PushButton(text="Save checkpoint…")
        self.continue_button = PushButton(text="Continue training", tooltip="Train on from the loaded checkpoint")
        self.load_button = PushButton(text="Load checkpoint…")
        self.checkpoint_label = Label(value="no checkpoint")
        self.num_samples = SpinBox(name="samples", value=16, min=1, max=10_000, tooltip="Images to generate")
        self.generate_seed = SpinBox(name="generate_seed", value=0, min=0, max=2**31 - 1)
        self.generate_button = PushButton(text="Generate")
        self.output = Container(
            widgets=[
                Container(widgets=[self.save_button, self.load_button], layout="horizontal", labels=False),
                self.checkpoint_label,
                self.continue_button,
                self.num_samples,
                self.generate_seed,
                self.generate_button,
            ]
        )

        layout = QVBoxLayout(self)
        for part in (self.data, self.setup, self.controls, self.status):
            layout.addWidget(part.native)
        layout.addWidget(self.progress)
        layout.addWidget(self.loss_plot)
        layout.addWidget(self.output.native)
        layout.addStretch()

        self._latest_progress: Progress | None = None
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(PROGRESS_REFRESH_MS)
        self._redraw_timer.timeout.connect(self._show_progress)
        self._pending_samples: Samples | None = None
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(PREVIEW_REFRESH_MS)
        self._preview_timer.timeout.connect(self._show_pending_preview)

        self.recipe.changed.connect(self._show_recipe)
        self.normalization["normalization"].changed.connect(self._show_normalization)
        self.start_button.clicked.connect(lambda: self.start())
        self.continue_button.clicked.connect(self.resume_from_checkpoint)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.run.stop)
        self.save_button.clicked.connect(self._ask_save_checkpoint)
        self.load_button.clicked.connect(self._ask_load_checkpoint)
        self.generate_button.clicked.connect(self.generate)
        self.run.state_changed.connect(self._show_state)
        self.generation.state_changed.connect(self._show_generation_state)
        self.generate_button.enabled = False
        self._show_target_picker()
        self._show_normalization(self.normalization["normalization"].value)
        self._show_state(self.run.state)

    # -- choices and forms ---------------------------------------------------------------------

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer list (napari calls this when layers are added, removed or renamed)."""
        self.data.reset_choices()

    def _layer_choices(self, _widget: Any) -> list[tuple[str, Image]]:
        """Grey-level image layers that are not synthetic (never train on our own output by accident)."""
        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and not layer.rgb and SYNTHETIC_SUFFIX not in layer.name
        ]

    def _target_choices(self, _widget: Any) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _needs_target(self) -> bool:
        return self._recipes[self._recipe_name].data_kind in TARGET_DATA_KINDS

    def _show_recipe(self, name: str) -> None:
        """Show `name`'s description, a fresh form of its settings and, for paired data, the target picker."""
        if name == self._recipe_name:
            return
        info = self._recipes[name]
        index = list(self.setup).index(self.settings)
        self.setup.remove(self.settings)
        self.settings = SettingsForm(info.settings_cls)
        self.setup.insert(index, self.settings)
        self.recipe_help.value = info.description
        self._recipe_name = name
        self._show_target_picker()

    def _show_target_picker(self) -> None:
        self.data["target"].visible = self._needs_target()

    def _show_normalization(self, kind: str) -> None:
        for used_by, names in NORMALIZATION_FIELDS.items():
            for name in names:
                self.normalization[name].visible = used_by == kind

    # -- starting and controlling a run --------------------------------------------------------

    def _config(self, resume: Path | None = None) -> TrainConfig:
        """The run's frozen configuration from the widgets (SettingsError naming each bad value)."""
        if str(self.out_dir.value) in ("", "."):
            raise InputError("no output folder chosen: choose the folder where checkpoints are written")
        return TrainConfig(
            recipe=self.recipe.value,
            out_dir=run_folder(Path(self.out_dir.value), self.recipe.value, resume=resume),
            settings=self.settings.values(),
            device=self.device.value,
            resume=resume,
            **self.options.values(),
            **self.normalization.values(),
        )

    def _training_data(self) -> list[MedImage] | list[tuple[MedImage, MedImage]]:
        """The selected image layers, or for recipes trained on targets the one image paired with its Labels layer."""
        layers = self.data["layers"].value
        if not layers:
            raise InputError("no training data selected: select one or more image layers under Data")
        images = [layer_image(layer) for layer in layers]
        if not self._needs_target():
            return images
        target = self.data["target"].value
        if target is None:
            raise InputError(
                f"recipe {self._recipe_name!r} trains on an image with its target map, and no target layer is "
                "chosen: choose a Labels layer under Target (paint one on the image with napari's Labels tools)"
            )
        if len(images) != 1:
            raise InputError(
                f"recipe {self._recipe_name!r} trains on one image with its target layer, but {len(images)} image "
                "layers are selected: select only the image that the target layer was painted on"
            )
        return [(images[0], layer_image(target))]

    def start(self, resume: Path | None = None) -> None:
        """Validate the widgets' values, then train in a child process; problems appear as a notification."""
        try:
            config = self._config(resume)
            recipe_cls, settings, _ = check_config(config)
            data = self._training_data()
        except MedsynthError as exc:
            report_error(exc)
            return
        self._source = data[0][0] if isinstance(data[0], tuple) else data[0]
        placeholder = placeholder_samples(recipe_cls.data_kind, settings, config.preview_samples)
        if config.sample_every and placeholder is not None:
            self._prepare_preview(placeholder)
        self.run.start(lambda control: train_in_process(config, data, control, threads=TRAIN_THREADS), self._on_event)
        self._watch_window(True)

    def resume_from_checkpoint(self) -> None:
        """Continue training from the loaded checkpoint (up to the steps now set)."""
        if self.checkpoint_path is None:
            report_error(InputError("no checkpoint loaded: load one before continuing training"))
            return
        self.start(resume=self.checkpoint_path)

    def toggle_pause(self) -> None:
        if self.run.state is RunState.PAUSED:
            self.run.resume()
        else:
            self.run.pause()

    def _show_state(self, state: RunState) -> None:
        idle = state is RunState.IDLE
        self.start_button.enabled = idle
        self.pause_button.enabled = state in (RunState.RUNNING, RunState.PAUSED)
        self.pause_button.text = "Resume" if state is RunState.PAUSED else "Pause"
        self.stop_button.enabled = state in (RunState.RUNNING, RunState.PAUSED)
        self.continue_button.enabled = idle and self.checkpoint_path is not None
        self.data.enabled = self.setup.enabled = idle
        if idle:
            self._watch_window(False)
            self._redraw_timer.stop()
            self._preview_timer.stop()
            self._show_pending_preview()
            self._show_progress()
        elif state is not RunState.RUNNING:
            self.status.value = f"{state.value}…"

    # -- events from the trainer (GUI thread) --------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Started):
            self._on_started(event)
        elif isinstance(event, Progress):
            self._on_progress(event)
        elif isinstance(event, Samples):
            self._on_samples(event)
        elif isinstance(event, CheckpointSaved):
            self._set_checkpoint(event.path)
        elif isinstance(event, Paused):
            self.status.value = f"paused at step {event.step}"
        elif isinstance(event, Resumed):
            self.status.value = f"resumed at step {event.step}"
        elif isinstance(event, Finished):
            self.status.value = f"{event.reason} at step {event.step}"
        elif isinstance(event, Failed):
            self.status.value = f"failed: {type(event.error).__name__}"
            report_error(event.error)

    def _on_started(self, event: Started) -> None:
        self._latest_progress = None
        self.progress.setRange(0, event.total_steps)
        self.progress.setValue(event.start_step)
        self.progress.setFormat(f"{event.recipe}: step %v of %m")
        if event.start_step == 0:
            self.loss_plot.clear()
        self.status.value = f"running on {event.device} from step {event.start_step}"

    def _on_progress(self, event: Progress) -> None:
        self._latest_progress = event
        self.loss_plot.add_points(event.step, event.losses)
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def _show_progress(self) -> None:
        """Show the latest step on the progress bar and the loss points received since the last redraw."""
        event = self._latest_progress
        if event is not None:
            self.progress.setValue(event.step)
            self.progress.setFormat(f"step %v of %m, {timedelta(seconds=round(event.eta_s))} left")
        self.loss_plot.redraw()

    def _on_samples(self, event: Samples) -> None:
        """Show samples now, or, within `PREVIEW_REFRESH_MS` of the last update, when that time is up."""
        self._pending_samples = event
        if not self._preview_timer.isActive():
            self._show_pending_preview()

    def _show_pending_preview(self) -> None:
        if self._pending_samples is not None:
            self._show_preview(self._pending_samples)
            self._pending_samples = None
            self._preview_timer.start()

    def _prepare_preview(self, placeholder: Samples) -> None:
        """Have a preview layer ready, hidden until samples arrive, before training starts.

        Creating a napari layer blocks the GUI thread for a quarter of a second or more; done here, that
        happens as the response to Start rather than as a freeze in the middle of training.
        """
        if self.preview_layer is None or self.preview_layer not in self.viewer.layers:
            data, kwargs, _ = to_layer_data(preview_image(placeholder, self._recipe_name, self._source))
            self.preview_layer = self.viewer.add_image(data, **{**kwargs, "visible": False})

    def _show_preview(self, event: Samples) -> None:
        """Update the preview layer in place (created if it is gone), and show it."""
        data, kwargs, _ = to_layer_data(preview_image(event, self._recipe_name, self._source))
        layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers or layer.ndim != data.ndim:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            self.preview_layer = self.viewer.add_image(data, **kwargs)
            return
        layer.data = data
        layer.scale = kwargs["scale"]
        layer.contrast_limits = kwargs["contrast_limits"]
        layer.metadata = kwargs["metadata"]
        layer.name = kwargs["name"]
        layer.visible = True

    # -- checkpoints and generation ------------------------------------------------------------

    def _set_checkpoint(self, path: Path) -> None:
        self.checkpoint_path = Path(path)
        # The run's folder names the run (start time and recipe), so the label says which run this is.
        self.checkpoint_label.value = f"checkpoint: {self.checkpoint_path.parent.name}/{self.checkpoint_path.name}"
        self.checkpoint_label.tooltip = str(self.checkpoint_path)
        self.generate_button.enabled = self.generation.state is RunState.IDLE
        self.continue_button.enabled = self.run.state is RunState.IDLE

    def load_checkpoint(self, path: Path | str) -> Checkpoint | None:
        """Read a checkpoint for Generate and for continuing training; show its recipe and settings."""
        try:
            checkpoint = load_checkpoint(path)
            if checkpoint.recipe not in self._recipes:
                raise InputError(f"checkpoint {path} is of recipe {checkpoint.recipe!r}, which this version does not have")
            self.recipe.value = checkpoint.recipe
            self.settings.set_values(checkpoint.settings)
        except MedsynthError as exc:
            report_error(exc)
            return None
        self._set_checkpoint(Path(path))
        return checkpoint

    def save_checkpoint(self, path: Path | str) -> Path | None:
        """Write the latest checkpoint (loaded or from training) to `path`, atomically."""
        try:
            if self.checkpoint_path is None:
                raise InputError("no checkpoint yet: train (or load a checkpoint) before saving one")
            return save_checkpoint(load_checkpoint(self.checkpoint_path), Path(path))
        except (MedsynthError, OSError) as exc:
            report_error(exc)
            return None

    def generate(self) -> EventWorker | None:
        """Generate images from the latest checkpoint in a worker; they appear as a new layer."""
        if self.checkpoint_path is None:
            report_error(InputError("no checkpoint yet: train or load a checkpoint before generating"))
            return None
        work = call(generate, self.checkpoint_path, self.num_samples.value, self.generate_seed.value, self.device.value)
        return self.generation.start(work, self._on_generation_event, self._add_generated)

    def _on_generation_event(self, event: Any) -> None:
        if isinstance(event, Failed):
            report_error(event.error)

    def _add_generated(self, image: MedImage | None) -> None:
        if image is not None:
            self.viewer.add_layer(Layer.create(*to_layer_data(image)))

    def _show_generation_state(self, state: RunState) -> None:
        self.generate_button.enabled = state is RunState.IDLE and self.checkpoint_path is not None

    def _ask_save_checkpoint(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save checkpoint", str(self.out_dir.value), "Checkpoints (*.safetensors)")
        if path:
            self.save_checkpoint(path)

    def _ask_load_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load checkpoint", str(self.out_dir.value), "Checkpoints (*.safetensors)")
        if path:
            self.load_checkpoint(path)

    # -- closing -------------------------------------------------------------------------------

    def event(self, event: QEvent) -> bool:
        # napari's remove_dock_widget takes the widget out of its dock without closing it.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.shutdown()
        return super().event(event)

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop training and wait for its final checkpoint (closing the widget or the viewer)."""
        self._pending_samples = None  # no new layer in a viewer that is closing
        self.generation.shutdown(0.0)  # its images would go to a viewer that is closing
        if self.run.worker is not None and not self.run.shutdown(SHUTDOWN_TIMEOUT_S):
            report_error(RuntimeError(f"training did not stop within {SHUTDOWN_TIMEOUT_S:.0f} s; its last checkpoint may be older"))

    def _watch_window(self, watch: bool) -> None:
        """While training runs, a Close event of the viewer's main window stops it (see `eventFilter`)."""
        if watch:
            window = self
            while window.parentWidget() is not None:  # parents, not window(): a floating dock is its own window
                window = window.parentWidget()
            if window is not self:
                window.installEventFilter(self)
                self._watched_window = window
        elif self._watched_window is not None:
            self._watched_window.removeEventFilter(self)
            self._watched_window = None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # The main window's Close arrives before napari tears the window down, while the widgets live.
        if watched is self._watched_window and event.type() == QEvent.Type.Close:
            self.shutdown()
        return False
