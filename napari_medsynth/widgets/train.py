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
then shows a Labels-layer picker and hands the trainer an ``(image, target)`` pair. Two-domain recipes
(``cyclegan``, ``kgan-fusion``) train on two sets of layers: the widget then shows a "domain B" picker
beside the layers of domain A and hands the trainer `TwoDomains`; its previews are in the units of
the domain the recipe's first direction translates into.

The dock opens at once: torch, the recipes and matplotlib are imported by `load_core` in a
background thread (seconds of CPU), after which the recipe forms, the device list and the loss
plot appear (`ready`); torch's first-optimizer imports, needed only by Generate, follow in the same
thread. Settings are grouped: data, recipe, steps, device and output folder first; recipe settings,
the other run options, normalisation and the pretrained weights found under "Advanced settings".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Select, SpinBox
from magicgui.widgets.bases import ValueWidget
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QFileDialog, QLabel, QProgressBar, QWidget

import medsynth
from medsynth.data.domains import TwoDomains
from medsynth.data.normalization import NORMALIZATION_FIELDS, NormalizationOptions
from medsynth.errors import InputError, MedsynthError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.training.config import RunOptions, TrainConfig
from medsynth.training.events import CheckpointSaved, Finished, Paused, Progress, Resumed, Samples, Started
from medsynth.training.process import train_in_process
from medsynth.training.runs import run_folder
from medsynth.weights import weights_report
from napari_medsynth.axes import samples_first
from napari_medsynth.layers import SYNTHETIC_SUFFIX, layer_image, to_layer_data
from napari_medsynth.notify import report_error
from napari_medsynth.placement import place_beside, show_new
from napari_medsynth.widgets.dock import advanced_group, reset_button, scrolled_content, wrap
from napari_medsynth.widgets.settings_form import SettingsForm
from napari_medsynth.workers import TRAIN_THREADS, BackgroundRun, EventWorker, Failed, RunState, call, warm_up_torch

if TYPE_CHECKING:
    import napari

    from medsynth.training.checkpoint import Checkpoint
    from medsynth.training.recipe import RecipeInfo
    from napari_medsynth.widgets.plot import LinePlot

DEFAULT_RECIPE = "dcgan"
DEFAULT_OUT_DIR = Path.home() / "medsynth-runs"
LAYER_LIST_HEIGHT_PX = 100
LOAD_AFTER_MS = 300
"""When the recipes start loading if the dock has not painted by then (else at its first paint)."""
BASIC_RUN_OPTIONS = ("steps",)
"""Run options shown with the basic settings; the others are under "Advanced settings"."""
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
    """Preview samples as a synthetic image in the source's units, laid out like generated images.

    ``(N, H, W)`` images are a stack of samples (``"zyx"``, sample axis 0). ``(N, T, H, W)`` sequences
    become ``(T, N, H, W)`` (``"tzyx"``, sample axis 1) with the source's frame interval, as
    `medsynth.training.sequences` returns them, so that a preview plays in step with the real cine.
    """
    provenance = SyntheticProvenance(recipe, medsynth.__version__, description=f"training preview, step {event.step}")
    if event.images.ndim == 3:
        array, axes, sample_axis, frame_time = event.images, "zyx", 0, None
    else:
        array, axes, sample_axis, frame_time = event.images.transpose(1, 0, 2, 3), "tzyx", 1, source.time_spacing
    return MedImage(
        array=array,
        axes=axes,
        spacing=(1.0, *(event.spacing or (1.0, 1.0))),
        time_spacing=frame_time,
        modality=source.modality,
        units=source.units,
        name=f"{recipe} preview",
        synthetic=provenance,
        metadata={"sample_axis": sample_axis},
    )


def preview_layer_data(event: Samples, recipe: str, source: MedImage) -> tuple[Any, dict[str, Any], str]:
    """The layer data tuple of `preview_image`, samples first (`napari_medsynth.axes.samples_first`)."""
    image = preview_image(event, recipe, source)
    return samples_first(image, to_layer_data(image))


def placeholder_samples(data_kind: str, settings: Any, n: int) -> Samples | None:
    """Zero samples of the shape a recipe's previews will have; None when the data decides it (lesion crops)."""
    if not hasattr(settings, "resolution"):
        return None
    side = int(settings.resolution)
    shape = (n, int(settings.frames), side, side) if data_kind == "sequence" else (n, side, side)
    return Samples(step=0, images=np.zeros(shape, dtype=np.float32))


@dataclass(frozen=True)
class CoreInfo:
    """What the widget needs from torch and the recipe registry, loaded off the GUI thread."""

    recipes: list[RecipeInfo]
    devices: list[str]


def load_core() -> Iterator[CoreInfo]:
    """Import torch, the recipes and matplotlib and yield what the forms need; then warm torch up.

    Runs in the widget's `loading` runner: importing torch and the recipes costs seconds of CPU,
    which on the GUI thread froze the viewer when the dock opened. `warm_up_torch` comes after the
    forms are shown, since only generation (not training, which runs in its own process) needs it.
    """
    from medsynth.training.recipe import list_recipes
    from napari_medsynth.widgets import plot  # noqa: F401 - matplotlib's import, paid here

    yield CoreInfo(list_recipes(), available_devices())
    warm_up_torch()


def weights_summary() -> str:
    """What `medsynth info` reports about pretrained weights, one line per file."""
    return "\n".join(f"{name}: {path if path else 'not found'}" for name, path in weights_report())


class TrainWidget(QWidget):
    """Train a recipe on image layers; see the module docstring."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.run = BackgroundRun(self)
        self.generation = BackgroundRun(self)
        self.preview_layer: Image | None = None
        self.checkpoint_path: Path | None = None
        self.loss_plot: LinePlot | None = None
        self._recipes: dict[str, RecipeInfo] = {}
        self._recipe_name = ""
        self._readouts: tuple[str, ...] = ()
        self._source: MedImage | None = None
        self._source_layer: Layer | None = None
        self._preview_shown = False
        self._watched_window: QWidget | None = None

        self.data = Container(
            widgets=[
                Select(name="layers", choices=self._layer_choices, tooltip="Image layers to train on"),
                ComboBox(
                    name="target",
                    choices=self._target_choices,
                    tooltip="Labels layer on the image's grid: the map this recipe learns to predict",
                ),
                Select(
                    name="layers_b",
                    label="domain B",
                    choices=self._layer_choices,
                    tooltip="Image layers of domain B (e.g. CT when the layers above are MR); for co-registered "
                    "recipes one per domain-A layer, in the same order",
                ),
            ],
            label="Data",
        )
        self.recipe = ComboBox(name="recipe", choices=[], tooltip="Model recipe")
        self.recipe_help = Label(value="loading torch and the recipes…")
        self.recipe_note = Label(value="")
        self.options = SettingsForm(RunOptions, fields=BASIC_RUN_OPTIONS)
        self.device = ComboBox(name="device", choices=["auto", "cpu"], tooltip="Where to train")
        self.out_dir = FileEdit(name="output_folder", mode="d", value=DEFAULT_OUT_DIR)
        self.setup = Container(
            widgets=[self.recipe, self.recipe_help, self.recipe_note, self.options, self.device, self.out_dir]
        )
        self.settings: SettingsForm | None = None  # the recipe's own form, once the recipes are loaded
        self.recipe_settings = Container(label="Recipe settings")
        self.more_options = SettingsForm(
            RunOptions, fields=[name for name in RunOptions.__dataclass_fields__ if name not in BASIC_RUN_OPTIONS]
        )
        self.normalization = SettingsForm(NormalizationOptions, label="Normalisation")
        self.advanced = Container(widgets=[self.recipe_settings, self.more_options, self.normalization])
        self.weights = QLabel(f"Pretrained weights (as `medsynth info` finds them):\n{weights_summary()}")
        self.weights.setWordWrap(True)

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
        self.readout = Label(value="")
        self.readout.visible = False

        self.save_button = PushButton(text="Save checkpoint…")
        self.continue_button = PushButton(text="Continue training", tooltip="Train on from the loaded checkpoint")
        self.load_button = PushButton(text="Load checkpoint…")
        self.checkpoint_label = Label(value="no checkpoint")
        self.num_samples = SpinBox(name="samples", value=16, min=1, max=10_000, tooltip="Images to generate")
        self.generate_seed = SpinBox(name="generate_seed", value=0, min=0, max=2**31 - 1)
        self.generate_button = PushButton(text="Generate")
        self.translate_note = Label(value="Translate images with this checkpoint in the Generate dock's Translate section")
        self.output = Container(
            widgets=[
                Container(widgets=[self.save_button, self.load_button], layout="horizontal", labels=False),
                self.checkpoint_label,
                self.continue_button,
                self.num_samples,
                self.generate_seed,
                self.generate_button,
                self.translate_note,
            ]
        )

        for name in ("layers", "layers_b"):
            self.data[name].native.setMaximumHeight(LAYER_LIST_HEIGHT_PX)
        wrap(*(label.native for label in (self.recipe_help, self.recipe_note, self.status, self.readout, self.checkpoint_label)))
        wrap(self.translate_note.native)
        layout = scrolled_content(self)
        layout.addWidget(self.data.native)
        layout.addWidget(self.setup.native)
        layout.addWidget(advanced_group("Advanced settings", self.advanced.native, self.weights, reset_button(self.reset_defaults)))
        for part in (self.controls, self.status):
            layout.addWidget(part.native)
        layout.addWidget(self.progress)
        self._plot_at = layout.count()  # the loss plot goes here once matplotlib is imported
        layout.addWidget(self.readout.native)
        layout.addWidget(self.output.native)
        layout.addStretch()
        self._layout = layout

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
        self._show_data_pickers()
        self._show_normalization(self.normalization["normalization"].value)
        self._show_state(self.run.state)

        self.loading = BackgroundRun(self)
        self._load_started = False
        QTimer.singleShot(LOAD_AFTER_MS, self._start_loading)  # in case the dock is not shown (a hidden window)

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        super().paintEvent(event)
        self._start_loading()

    def _start_loading(self) -> None:
        """Start `load_core` in a worker, once; its imports would slow the dock's first paint, so not before it."""
        if self._load_started:
            return
        self._load_started = True
        self.loading.start(lambda _control: load_core(), self._on_core_loaded)

    @property
    def ready(self) -> bool:
        """Whether the recipes are loaded (the forms shown and Start usable)."""
        return bool(self._recipes)

    def _on_core_loaded(self, core: CoreInfo | Failed) -> None:
        """Show the recipe list, the default recipe's form, the devices and the loss plot (GUI thread)."""
        from napari_medsynth.widgets.plot import LinePlot

        if isinstance(core, Failed):
            report_error(core.error)
            return

        self.loss_plot = LinePlot(title="Losses", ylabel="loss")
        self.loss_plot.hide()  # an empty plot says nothing: it shows from the first run on
        self._layout.insertWidget(self._plot_at, self.loss_plot)
        self._recipes = {info.name: info for info in core.recipes}
        self.device.choices = core.devices
        self.recipe.choices = list(self._recipes)
        self.recipe.value = DEFAULT_RECIPE
        self._show_recipe(DEFAULT_RECIPE)
        self._show_state(self.run.state)

    def option(self, name: str) -> ValueWidget:
        """The field of run option `name`, basic or advanced."""
        return (self.options if name in BASIC_RUN_OPTIONS else self.more_options)[name]

    def reset_defaults(self) -> None:
        """Put the recipe, its settings, run options, normalisation, device and folder back to their defaults."""
        if self.ready:
            self.recipe.value = DEFAULT_RECIPE
            self._show_recipe(DEFAULT_RECIPE, force=True)
        for form in (self.options, self.more_options, self.normalization):
            form.reset()
        self.device.value = "auto"
        self.out_dir.value = DEFAULT_OUT_DIR

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
        info = self._recipes.get(self._recipe_name)
        if info is None:  # recipes not loaded yet: importing them here would import torch on the GUI thread
            return False
        from medsynth.training.recipe import TARGET_DATA_KINDS

        return info.data_kind in TARGET_DATA_KINDS

    def _two_domains(self) -> bool:
        info = self._recipes.get(self._recipe_name)
        return info is not None and info.data_kind == "two-domain"

    def _show_recipe(self, name: str, force: bool = False) -> None:
        """Show `name`'s description, a fresh form of its settings and, for paired data, the target picker.

        The form starts from the recipe's defaults for this machine (`Recipe.local_defaults`): e.g.
        hrgan-dtcr's weight-free DTCR features when no VGG weight file is found, said in `recipe_note`.
        """
        if name == self._recipe_name and not force:
            return
        from medsynth.training.recipe import get_recipe

        info = self._recipes[name]
        values, note = get_recipe(name).local_defaults()
        if self.settings is not None:
            self.recipe_settings.remove(self.settings)
        self.settings = SettingsForm(info.settings_cls, values)
        self.recipe_settings.append(self.settings)
        self.recipe_help.value = info.description
        self.recipe_note.value = note
        self.recipe_note.visible = bool(note)
        self._recipe_name = name
        self._show_data_pickers()

    def _show_data_pickers(self) -> None:
        """The target picker for recipes trained on targets, the domain-B picker for two-domain recipes.

        Two-domain recipes translate given images rather than draw new ones, so the sample count,
        seed and Generate button give way to a note pointing to the Generate dock's Translate section.
        """
        self.data["target"].visible = self._needs_target()
        two = self._two_domains()
        self.data["layers_b"].visible = two
        self.data["layers"].label = "domain A" if two else "layers"
        for widget in (self.num_samples, self.generate_seed, self.generate_button):
            widget.visible = not two
        self.translate_note.visible = two

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
            **self.more_options.values(),
            **self.normalization.values(),
        )

    def _training_data(self) -> list[MedImage] | list[tuple[MedImage, MedImage]] | TwoDomains:
        """The selected image layers; for recipes trained on targets the one image paired with its Labels layer;
        for two-domain recipes the layers of domain A and of domain B."""
        layers = self.data["layers"].value
        if not layers:
            raise InputError("no training data selected: select one or more image layers under Data")
        images = [layer_image(layer) for layer in layers]
        if self._two_domains():
            layers_b = self.data["layers_b"].value
            if not layers_b:
                raise InputError(
                    f"recipe {self._recipe_name!r} trains on two domains and no domain-B layer is selected: select "
                    "the images of domain B under Data (domain B), those of domain A above them"
                )
            return TwoDomains(a=images, b=[layer_image(layer) for layer in layers_b])
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
        if not self.ready:
            report_error(InputError("the recipes are still loading: start again once the recipe list shows"))
            return
        from medsynth.training.trainer import check_config

        try:
            config = self._config(resume)
            recipe_cls, settings, _ = check_config(config)
            data = self._training_data()
        except MedsynthError as exc:
            report_error(exc)
            return
        self._source, self._source_layer = self._preview_source(recipe_cls, data)
        self._readouts = recipe_cls.readouts
        placeholder = placeholder_samples(recipe_cls.data_kind, settings, config.preview_samples)
        if config.sample_every and placeholder is not None:
            self._prepare_preview(placeholder)
        self.run.start(lambda control: train_in_process(config, data, control, threads=TRAIN_THREADS), self._on_event)
        self._watch_window(True)

    def _preview_source(self, recipe_cls: Any, data: Any) -> tuple[MedImage, Layer]:
        """The image whose units the previews are in, and the layer they are placed beside.

        A two-domain recipe previews translations by its first direction, in the units of that
        direction's output domain; the others preview the (first) training image's kind.
        """
        if self._two_domains():
            in_a = recipe_cls.directions[next(iter(recipe_cls.directions))] == "a"
            return (data.a if in_a else data.b)[0], self.data["layers" if in_a else "layers_b"].value[0]
        return (data[0][0] if isinstance(data[0], tuple) else data[0]), self.data["layers"].value[0]

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
        self.start_button.enabled = idle and self.ready
        self.pause_button.enabled = state in (RunState.RUNNING, RunState.PAUSED)
        self.pause_button.text = "Resume" if state is RunState.PAUSED else "Pause"
        self.stop_button.enabled = state in (RunState.RUNNING, RunState.PAUSED)
        self.continue_button.enabled = idle and self.checkpoint_path is not None
        self.data.enabled = self.setup.enabled = self.advanced.enabled = idle
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
            self.readout.visible = False
        self.loss_plot.show()
        self.status.value = f"running on {event.device} from step {event.start_step}"

    def _on_progress(self, event: Progress) -> None:
        """Losses go to the plot; the recipe's schedule and stage values (its `readouts`) to the readout line."""
        self._latest_progress = event
        losses = {name: value for name, value in event.losses.items() if name not in self._readouts}
        self.loss_plot.add_points(event.step, losses)
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def _show_progress(self) -> None:
        """Show the latest step on the progress bar and the loss points received since the last redraw."""
        event = self._latest_progress
        if event is not None:
            self.progress.setValue(event.step)
            self.progress.setFormat(f"step %v of %m, {timedelta(seconds=round(event.eta_s))} left")
            shown = [f"{name} {event.losses[name]:.4g}" for name in self._readouts if name in event.losses]
            self.readout.value = "   ".join(shown)
            self.readout.visible = bool(shown)
        if self.loss_plot is not None:
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
            data, kwargs, layer_type = preview_layer_data(placeholder, self._recipe_name, self._source)
            self.preview_layer = self._add_beside((data, {**kwargs, "visible": False}, layer_type))
        self._preview_shown = False

    def _show_preview(self, event: Samples) -> None:
        """Update the preview layer in place (created if it is gone), show it and, the first time, bring it into view."""
        data, kwargs, layer_type = preview_layer_data(event, self._recipe_name, self._source)
        layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers or layer.ndim != data.ndim:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            self.preview_layer = layer = self._add_beside((data, kwargs, layer_type))
        else:
            layer.data = data
            layer.scale = kwargs["scale"]
            layer.contrast_limits = kwargs["contrast_limits"]
            layer.metadata = kwargs["metadata"]
            layer.name = kwargs["name"]
            layer.visible = True
        if not self._preview_shown:
            self._place_beside_source(layer)  # again: the placeholder did not know the pixel size
            show_new(self.viewer, layer)
            self._preview_shown = True

    def _add_beside(self, layer_data: tuple[Any, dict[str, Any], str]) -> Layer:
        """Add a synthetic layer beside the training source (else beside the visible layers), at the current slice."""
        layer = Layer.create(*layer_data)
        self._place_beside_source(layer)
        self.viewer.add_layer(layer)
        return layer

    def _place_beside_source(self, layer: Layer) -> None:
        source = self._source_layer
        place_beside(self.viewer, layer, [source] if source is not None and source in self.viewer.layers else ())

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
        from medsynth.training.checkpoint import load_checkpoint

        if not self.ready:
            report_error(InputError("the recipes are still loading: load the checkpoint once the recipe list shows"))
            return None
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
        from medsynth.training.checkpoint import load_checkpoint, save_checkpoint

        try:
            if self.checkpoint_path is None:
                raise InputError("no checkpoint yet: train (or load a checkpoint) before saving one")
            return save_checkpoint(load_checkpoint(self.checkpoint_path), Path(path))
        except (MedsynthError, OSError) as exc:
            report_error(exc)
            return None

    def generate(self) -> EventWorker | None:
        """Generate images from the latest checkpoint in a worker; they appear as a new layer beside the source."""
        from medsynth.training.generate import generate

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
            show_new(self.viewer, self._add_beside(to_layer_data(image)))

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
        self._load_started = True  # nor a load that has not started yet
        self.loading.shutdown(0.0)  # still loading: nothing is left to show its result to
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
