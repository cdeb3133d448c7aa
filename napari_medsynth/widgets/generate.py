"""The Generate dock widget: synthetic sequences (4D layers with a time slider) or 2D images from a checkpoint.

The widget is thin. The options form (`GenerateOptions`, rendered by `SettingsForm`) becomes the
arguments of `medsynth.training.sequences.iter_sequences` for a sequence recipe (4D layers with a
time slider) or of `medsynth.training.generate.generate` for a 2D one (a stack of images; the
sequence-only options are hidden). Either runs in the plugin's background runner
(`napari_medsynth.workers.BackgroundRun`); progress arrives in `_on_event` and the finished image
in `_add_layer`, on the GUI thread, the only place that touches layers. Several sequences become
one layer ``(sample, t, y, x)`` (`napari_medsynth.axes.samples_first`), so that its time shares the
slider of a real cine ``(t, y, x)``; it is placed beside the layers shown and the view is reset to
show it at its first frame (`napari_medsynth.placement`). "Side by side" switches napari's grid
mode instead, each layer in its own cell with the same time slider.

For checkpoints with an autoencoder (``vqgan-hdfb``, ``vqgan``), Reconstruct runs the chosen image layer
through it (`medsynth.training.reconstruct.reconstruct`) and shows input | reconstruction |
difference side by side, on the input's grid.

For checkpoints of two-domain recipes (``cyclegan``, ``kgan-fusion``), which translate given images
and draw none of their own, the Translate section replaces the generation options: a direction
(the recipe's `directions`) and the input layer, or one layer per domain for recipes that take two
images (e.g. A: MR, B: CT), each labelled with its domain's modality. The translation
(`medsynth.training.translate.translate`) becomes a layer on the first input's grid, in the output
domain's units and marked synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Image, Layer
from qtpy.QtWidgets import QWidget

from medsynth.errors import InputError, MedsynthError
from medsynth.io.image import MedImage
from medsynth.models.hrgan import MODALITIES
from medsynth.settings import setting
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.generate import generate
from medsynth.training.reconstruct import Reconstruction, reconstruct
from medsynth.training.recipe import get_recipe
from medsynth.training.sequences import SequenceProgress, iter_sequences
from medsynth.training.translate import translate
from napari_medsynth.axes import samples_first
from napari_medsynth.layers import layer_image, to_layer_data
from napari_medsynth.notify import report_error
from napari_medsynth.placement import place_beside, show_new
from napari_medsynth.widgets.dock import advanced_group, reset_button, scrolled_content, wrap
from napari_medsynth.widgets.settings_form import SettingsForm
from napari_medsynth.workers import BackgroundRun, Failed, RunState, call, until_stopped

if TYPE_CHECKING:
    import napari

SHUTDOWN_TIMEOUT_S = 30.0
ADVANCED_OPTIONS = ("modality", "resolution")
"""Options under "Advanced"; a checkpoint fills them in with its own values."""
SEQUENCE_ONLY = ("modality", "frames", "resolution")
"""Options that only a sequence recipe's checkpoint takes; a 2D recipe draws images at its training size."""


@dataclass
class GenerateOptions:
    """What to generate; a loaded sequence checkpoint fills in its own modality, clip length and resolution."""

    modality: str = setting("US", "Modality the generator is conditioned on", choices=MODALITIES)
    frames: int = setting(16, "Frames per sequence", min=1, max=1000)
    resolution: int = setting(128, "Frame side length in pixels (the training side times a multiple of 1/4)", min=8, max=4096)
    count: int = setting(
        1, "Number of sequences or images (several share one layer, on a sample axis before time)", min=1, max=256
    )
    seed: int = setting(0, "Random seed (the same seed gives the same output)", min=0, max=2**31 - 1)


class GenerateWidget(QWidget):
    """Generate sequences or images from a checkpoint into new layers; see the module docstring."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None, device: str = "auto") -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.device = device
        self.run = BackgroundRun(self)
        self.checkpoint: Checkpoint | None = None
        self.layer = None
        self.translated: Image | None = None
        """The latest translation's layer."""

        self.checkpoint_file = FileEdit(name="checkpoint", mode="r", filter="*.safetensors", tooltip="A sequence or 2D checkpoint")
        self.checkpoint_label = Label(value="no checkpoint")
        fields = list(GenerateOptions.__dataclass_fields__)
        self.options = SettingsForm(GenerateOptions, fields=[name for name in fields if name not in ADVANCED_OPTIONS])
        self.advanced_options = SettingsForm(GenerateOptions, fields=ADVANCED_OPTIONS)
        self.generate_button = PushButton(text="Generate")
        self.stop_button = PushButton(text="Stop")
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.side_by_side = CheckBox(text="Real and synthetic side by side (grid)", value=False)
        self.source = ComboBox(name="input", choices=self._image_choices, tooltip="Image layer to reconstruct")
        self.reconstruct_button = PushButton(text="Reconstruct (input | reconstruction | difference)")
        self.reconstruction = Container(
            widgets=[self.source, self.reconstruct_button], label="Autoencoder", visible=False
        )
        self.direction = ComboBox(name="direction", choices=[], tooltip="Translation direction")
        self.translate_inputs = {
            domain: ComboBox(name=f"input_{domain}", choices=self._image_choices, tooltip="Image layer to translate")
            for domain in ("a", "b")
        }
        self.translate_button = PushButton(text="Translate")
        self.translation = Container(
            widgets=[self.direction, *self.translate_inputs.values(), self.translate_button],
            label="Translate",
            visible=False,
        )
        self.generate_controls = Container(
            widgets=[self.generate_button, self.stop_button], layout="horizontal", labels=False
        )
        form = Container(
            widgets=[
                self.checkpoint_file,
                self.checkpoint_label,
                self.options,
                self.generate_controls,
                self.translation,
                self.progress,
                self.side_by_side,
                self.reconstruction,
            ]
        )
        wrap(self.checkpoint_label.native)
        layout = scrolled_content(self)
        layout.addWidget(form.native)
        layout.addWidget(advanced_group("Advanced settings", self.advanced_options.native, reset_button(self.reset_defaults)))
        layout.addStretch()

        self.checkpoint_file.changed.connect(lambda path: self.load(path))
        self.generate_button.clicked.connect(self.generate)
        self.reconstruct_button.clicked.connect(self.reconstruct)
        self.translate_button.clicked.connect(self.translate)
        self.direction.changed.connect(self._show_direction)
        self.stop_button.clicked.connect(self.run.stop)
        self.side_by_side.changed.connect(self._show_side_by_side)
        self.run.state_changed.connect(self._show_state)
        self._show_state(self.run.state)

    def load(self, path: Path | str) -> None:
        """Read the checkpoint at `path`; of a sequence recipe, show its own modality, clip length and resolution."""
        try:
            checkpoint = load_checkpoint(path)
        except MedsynthError as exc:
            report_error(exc)
            return
        self.checkpoint = checkpoint
        settings = checkpoint.settings
        side = settings.get("resolution", checkpoint.data.get("item_shape", [None])[-1])  # a student has its teacher's
        self.checkpoint_label.value = f"{checkpoint.recipe}, step {checkpoint.step}, {side} px"
        self._show_checkpoint_values()
        for name in SEQUENCE_ONLY:
            self.option(name).visible = self._sequences()
        recipe = get_recipe(checkpoint.recipe)
        self.reconstruction.visible = hasattr(recipe, "reconstruct")
        self.translation.visible = self._translates()
        self.options.visible = self.generate_controls.visible = not self._translates()
        if self._translates():
            self.checkpoint_label.value += f", {self._domain_name('a')} and {self._domain_name('b')}"
            self.direction.choices = list(recipe.directions)
            self._show_direction(self.direction.value)
        self._show_state(self.run.state)

    def option(self, name: str) -> Any:
        """The field of option `name`, basic or advanced."""
        return (self.advanced_options if name in ADVANCED_OPTIONS else self.options)[name]

    def _show_checkpoint_values(self) -> None:
        """Fill in the loaded checkpoint's own modality, clip length and resolution."""
        settings = self.checkpoint.settings
        known = {key: settings[key] for key in SEQUENCE_ONLY if key in settings}
        try:
            for form in (self.options, self.advanced_options):
                form.set_values(known)
        except MedsynthError as exc:
            report_error(exc)

    def reset_defaults(self) -> None:
        """Put every option back to its default: the loaded checkpoint's values, else the declared ones."""
        for form in (self.options, self.advanced_options):
            form.reset()
        if self.checkpoint is not None:
            self._show_checkpoint_values()
        self.side_by_side.value = False

    def reset_choices(self, *_: Any) -> None:
        """Refresh the input layer lists (napari calls this when layers are added, removed or renamed)."""
        self.source.reset_choices()
        for combo in self.translate_inputs.values():
            combo.reset_choices()

    def _image_choices(self, _widget: Any) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb]

    def reconstruct(self) -> None:
        """Reconstruct the chosen image layer with the checkpoint's autoencoder, in a worker."""
        layer = self.source.value
        if self.checkpoint is None or layer is None or self.run.state is not RunState.IDLE:
            return
        work = call(reconstruct, self.checkpoint, layer_image(layer), self.device)
        self.run.start(work, self._on_event, self._add_reconstruction)

    def _domain_name(self, domain: str) -> str:
        """``"A: MR"``: the domain's letter and the modality of its training images, from the checkpoint."""
        described = self.checkpoint.data if domain == "a" else self.checkpoint.data.get("b", {})
        return f"{domain.upper()}: {described.get('modality', 'OT')}"

    def _show_direction(self, direction: str | None) -> None:
        """Show one input picker per image `direction` takes, labelled with its domain."""
        if direction is None or not self._translates():
            return
        recipe = get_recipe(self.checkpoint.recipe)
        domains = recipe.input_domains(direction)
        for k, combo in enumerate(self.translate_inputs.values()):
            combo.visible = k < len(domains)
            if k < len(domains):
                combo.label = f"input ({self._domain_name(domains[k])})"
        output = recipe.directions[direction]
        self.direction.tooltip = f"Translation direction; the output is in the units of {self._domain_name(output)}"

    def translate(self) -> None:
        """Translate the chosen input layer(s) in the chosen direction, in a worker."""
        if not self._translates() or self.run.state is not RunState.IDLE:
            return
        direction = self.direction.value
        inputs = len(get_recipe(self.checkpoint.recipe).input_domains(direction))
        layers = list(self.translate_inputs.values())[:inputs]
        try:
            missing = [combo.label for combo in layers if combo.value is None]
            if missing:
                raise InputError(
                    f"no image layer chosen as {' and '.join(missing)}: open an image and choose it under Translate"
                )
            images = [layer_image(combo.value) for combo in layers]
        except MedsynthError as exc:
            report_error(exc)
            return
        self.progress.value, self.progress.max = 0, 0  # busy: the translation reports no steps
        work = call(translate, self.checkpoint, images, direction, self.device)
        self.run.start(work, self._on_event, self._add_translation)

    def generate(self) -> None:
        """Start generating with the form's values in a worker."""
        if self.checkpoint is None or self.run.state is not RunState.IDLE:
            return
        try:
            options = {**self.options.values(), **self.advanced_options.values()}
        except MedsynthError as exc:
            report_error(exc)
            return
        checkpoint, device = self.checkpoint, self.device
        self.progress.value = 0
        if not self._sequences():
            self.progress.max = 1  # one call makes every image
            images = call(generate, checkpoint, options["count"], options["seed"], device)
            self.run.start(images, self._on_event, self._add_layer)
            return
        self.progress.max = options["count"] * options["frames"]
        sequences = (checkpoint, options["count"], options["seed"], options["frames"], options["resolution"],
                     options["modality"], device)  # fmt: skip
        self.run.start(lambda control: until_stopped(iter_sequences(*sequences), control), self._on_event, self._add_layer)

    def _translates(self) -> bool:
        return self.checkpoint is not None and get_recipe(self.checkpoint.recipe).data_kind == "two-domain"

    def _sequences(self) -> bool:
        return self.checkpoint is not None and get_recipe(self.checkpoint.recipe).data_kind == "sequence"

    def _on_event(self, event: Any) -> None:
        if isinstance(event, SequenceProgress):
            self.progress.value = event.done
        elif isinstance(event, Failed):
            report_error(event.error)

    def _add_layer(self, image: MedImage | None) -> None:
        """The generated sequences or images as a new layer (None: stopped before the end)."""
        if image is None:
            return
        self.progress.value = self.progress.max
        layer = Layer.create(*samples_first(image, to_layer_data(image)))
        place_beside(self.viewer, layer)
        self.layer = self.viewer.add_layer(layer)
        show_new(self.viewer, layer)  # the view fits it in, at its first frame, ready to play

    def _add_translation(self, image: MedImage | None) -> None:
        """The translation as a new layer on its input's grid, brought into view (None: the work failed)."""
        self.progress.max = 1
        if image is None:
            return
        self.progress.value = 1
        self.translated = self.viewer.add_layer(Layer.create(*to_layer_data(image)))
        show_new(self.viewer, self.translated)

    def _add_reconstruction(self, result: Reconstruction | None) -> None:
        """Reconstruction and difference beside the input, side by side (None: the work failed)."""
        if result is None:
            return
        for image in (result.reconstruction, result.difference):
            data, kwargs, _ = to_layer_data(image)
            self.viewer.add_image(data, **kwargs)
        self.side_by_side.value = True

    def _show_side_by_side(self, on: bool) -> None:
        self.viewer.canvas.grid.enabled = bool(on)

    def _show_state(self, state: RunState) -> None:
        self.generate_button.enabled = state is RunState.IDLE and self.checkpoint is not None
        self.reconstruct_button.enabled = self.translate_button.enabled = self.generate_button.enabled
        self.stop_button.enabled = state is RunState.RUNNING

    def closeEvent(self, event: Any) -> None:
        self.run.shutdown(SHUTDOWN_TIMEOUT_S)
        super().closeEvent(event)
