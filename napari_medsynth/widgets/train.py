"""The Train dock widget: pick image layers and a recipe, train in a worker, watch losses and samples.

The widget is thin. Widget values become a `TrainConfig` in `_config()` only; the worker receives
that config and the layers' lazy arrays, never the widgets. Events from the trainer arrive in
`_on_event` on the GUI thread, the only place that touches layers, the plot and the progress bar.
Whether training is idle, running, paused or stopping lives in `TrainingRun`, which the buttons
observe. Closing the widget or the viewer stops training and waits for its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Select, SpinBox
from napari.layers import Image, Layer
from napari.utils import progress
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget
from superqt.utils import FunctionWorker

import medsynth
from medsynth.errors import InputError, MedsynthError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.settings import setting
from medsynth.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.events import CheckpointSaved, Finished, Paused, Progress, Resumed, Samples, Started
from medsynth.training.generate import generate
from medsynth.training.recipe import list_recipes
from medsynth.training.trainer import check_config, train
from napari_medsynth.layers import SYNTHETIC_SUFFIX, from_layer, to_layer_data
from napari_medsynth.notify import report_error
from napari_medsynth.widgets.plot import LinePlot
from napari_medsynth.widgets.settings_form import SettingsForm
from napari_medsynth.workers import Failed, RunState, TrainingRun, warm_up_torch

if TYPE_CHECKING:
    import napari

DEFAULT_RECIPE = "dcgan"
SHUTDOWN_TIMEOUT_S = 120.0
"""How long closing waits for the trainer to finish its step and write the checkpoint."""
PLOT_REDRAW_MS = 1000
"""Loss points arriving within this time are drawn together: a matplotlib redraw costs the GUI thread
tens of milliseconds (hundreds on a busy 2-core machine). The progress bar shows the step and ETA."""


def _config_default(name: str) -> Any:
    return TrainConfig.__dataclass_fields__[name].default


@dataclass
class RunOptions:
    """The run options the widget shows; the rest of `TrainConfig` keeps its defaults."""

    steps: int = setting(_config_default("steps"), "Total generator updates", min=1, max=10_000_000)
    slice_axis: int = setting(0, "Axis of 3D volumes to slice: 0 axial (z), 1 coronal (y), 2 sagittal (x)", choices=(0, 1, 2))
    sample_every: int = setting(_config_default("sample_every"), "Steps between preview refreshes (0: none)", min=0, max=1_000_000)
    checkpoint_every: int = setting(_config_default("checkpoint_every"), "Steps between checkpoints", min=1, max=1_000_000)
    log_every: int = setting(_config_default("log_every"), "Steps between points of the loss plot", min=1, max=1_000_000)
    seed: int = setting(_config_default("seed"), "Random seed (the same seed repeats a CPU run)", min=0, max=2**31 - 1)


def available_devices() -> list[str]:
    """``auto``, ``cpu`` and the accelerators torch can use here."""
    import torch

    devices = ["auto", "cpu"] + [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    return devices + (["mps"] if torch.backends.mps.is_available() else [])


def layer_image(layer: Image) -> MedImage:
    """A layer as a MedImage whose array is the layer's own (numpy, memmap or dask), not a copy."""
    data, attributes, _ = layer.as_layer_data_tuple()
    if layer.multiscale:
        data = data[0]
    return from_layer(data, attributes)


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


class TrainWidget(QWidget):
    """Train a recipe on image layers; see the module docstring."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        warm_up_torch()
        self.viewer = napari_viewer
        self.run = TrainingRun()
        self.preview_layer: Image | None = None
        self.checkpoint_path: Path | None = None
        self.progress: progress | None = None
        # Paired recipes (danger-unet, lesion-heatmap) need a target per image, which layers alone do not give.
        self._recipes = {info.name: info for info in list_recipes() if info.data_kind != "paired"}
        self._source: MedImage | None = None
        self._watched_window: QWidget | None = None

        self.data = Container(
            widgets=[
                Select(name="layers", choices=self._layer_choices, tooltip="Image layers to train on"),
            ],
            label="Data",
        )
        self.recipe = ComboBox(name="recipe", choices=list(self._recipes), value=DEFAULT_RECIPE, tooltip="Model recipe")
        self._recipe_name = self.recipe.value
        self.recipe_help = Label(value=self._recipes[self._recipe_name].description)
        self.settings = SettingsForm(self._recipes[self._recipe_name].settings_cls)
        self.options = SettingsForm(RunOptions)
        self.device = ComboBox(name="device", choices=available_devices(), tooltip="Where to train")
        self.out_dir = FileEdit(name="output_folder", mode="d", value=Path.home() / "medsynth-runs")
        self.setup = Container(widgets=[self.recipe, self.recipe_help, self.settings, self.options, self.device, self.out_dir])

        self.start_button = PushButton(text="Start")
        self.pause_button = PushButton(text="Pause")
        self.stop_button = PushButton(text="Stop")
        self.status = Label(value="idle")
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
        layout.addWidget(self.loss_plot)
        layout.addWidget(self.output.native)
        layout.addStretch()

        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(PLOT_REDRAW_MS)
        self._redraw_timer.timeout.connect(self.loss_plot.redraw)

        self.recipe.changed.connect(self._show_recipe)
        self.start_button.clicked.connect(lambda: self.start())
        self.continue_button.clicked.connect(self.resume_from_checkpoint)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.run.stop)
        self.save_button.clicked.connect(self._ask_save_checkpoint)
        self.load_button.clicked.connect(self._ask_load_checkpoint)
        self.generate_button.clicked.connect(self.generate)
        self.run.state_changed.connect(self._show_state)
        self.generate_button.enabled = False
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

    def _show_recipe(self, name: str) -> None:
        """Show `name`'s description and a fresh form of its settings."""
        if name == self._recipe_name:
            return
        info = self._recipes[name]
        index = list(self.setup).index(self.settings)
        self.setup.remove(self.settings)
        self.settings = SettingsForm(info.settings_cls)
        self.setup.insert(index, self.settings)
        self.recipe_help.value = info.description
        self._recipe_name = name

    # -- starting and controlling a run --------------------------------------------------------

    def _config(self, resume: Path | None = None) -> TrainConfig:
        """The run's frozen configuration from the widgets (SettingsError naming each bad value)."""
        if str(self.out_dir.value) in ("", "."):
            raise InputError("no output folder chosen: choose the folder where checkpoints are written")
        return TrainConfig(
            recipe=self.recipe.value,
            out_dir=Path(self.out_dir.value),
            settings=self.settings.values(),
            device=self.device.value,
            resume=resume,
            **self.options.values(),
        )

    def _training_images(self) -> list[MedImage]:
        layers = self.data["layers"].value
        if not layers:
            raise InputError("no training data selected: select one or more image layers under Data")
        return [layer_image(layer) for layer in layers]

    def start(self, resume: Path | None = None) -> None:
        """Validate the widgets' values, then train in a worker; problems appear as a notification."""
        try:
            config = self._config(resume)
            check_config(config)
            images = self._training_images()
        except MedsynthError as exc:
            report_error(exc)
            return
        self._source = images[0]
        self.run.start(lambda control: train(config, images, control), self._on_event)
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
            self._close_progress()
            self._redraw_timer.stop()
            self.loss_plot.redraw()
        elif state is not RunState.RUNNING:
            self.status.value = f"{state.value}…"

    # -- events from the trainer (GUI thread) --------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Started):
            self._on_started(event)
        elif isinstance(event, Progress):
            self._on_progress(event)
        elif isinstance(event, Samples):
            self._show_preview(event)
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
        self._close_progress()
        self.progress = progress(total=event.total_steps, initial=event.start_step, desc=f"Training {event.recipe}")
        if event.start_step == 0:
            self.loss_plot.clear()
        self.status.value = f"running on {event.device} from step {event.start_step}"

    def _on_progress(self, event: Progress) -> None:
        if self.progress is not None:
            self.progress.update(event.step - self.progress.n)
        self.loss_plot.add_points(event.step, event.losses)
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def _show_preview(self, event: Samples) -> None:
        """Update the preview layer in place (created on the first samples)."""
        data, kwargs, _ = to_layer_data(preview_image(event, self._recipe_name, self._source))
        if self.preview_layer is not None and self.preview_layer in self.viewer.layers:
            self.preview_layer.data = data
            self.preview_layer.scale = kwargs["scale"]
            self.preview_layer.contrast_limits = kwargs["contrast_limits"]
            self.preview_layer.metadata = kwargs["metadata"]
        else:
            self.preview_layer = self.viewer.add_image(data, **kwargs)

    def _close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    # -- checkpoints and generation ------------------------------------------------------------

    def _set_checkpoint(self, path: Path) -> None:
        self.checkpoint_path = Path(path)
        self.checkpoint_label.value = f"checkpoint: {self.checkpoint_path.name}"
        self.generate_button.enabled = True
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

    def generate(self) -> FunctionWorker | None:
        """Generate images from the latest checkpoint in a worker; they appear as a new layer."""
        if self.checkpoint_path is None:
            report_error(InputError("no checkpoint yet: train or load a checkpoint before generating"))
            return None
        worker = FunctionWorker(generate, self.checkpoint_path, self.num_samples.value, self.generate_seed.value, self.device.value)
        worker.returned.connect(self._add_generated)
        worker.errored.connect(report_error)
        worker.finished.connect(lambda: setattr(self.generate_button, "enabled", True))
        self.generate_button.enabled = False
        worker.start()
        return worker

    def _add_generated(self, image: MedImage) -> None:
        self.viewer.add_layer(Layer.create(*to_layer_data(image)))

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
        if self.run.worker is not None and not self.run.shutdown(SHUTDOWN_TIMEOUT_S):
            report_error(RuntimeError(f"training did not stop within {SHUTDOWN_TIMEOUT_S:.0f} s; its last checkpoint may be older"))
        self._close_progress()

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
