"""Section 2 of the Lesions dock: the lesion model, a SinGAN trained on one crop (or loaded).

The crop is a Shapes rectangle (its selected or last one) or a label's bounding box in a Labels
layer, cut from the background's shown plane as a 2D image in its units, modality and pixel
spacing. SinGAN trains like every recipe trained from the viewer: in a child process
(`medsynth.training.process.train_in_process`) whose events the plugin's background runner relays;
the trained model is the run's result.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Label, PushButton, SpinBox
from napari.layers import Labels, Layer, Shapes
from napari.utils import progress

from medsynth.data.geometry import image_plane, label_box, rectangle_box
from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.lesions.crop import lesion_crop
from medsynth.lesions.singan_training import (
    LesionGenerator,
    SinGANRunOptions,
    SinGANSettings,
    load_singan,
    save_singan,
    train_singan,
)
from medsynth.settings import parse
from medsynth.training.events import Finished, Progress, Samples, Started
from medsynth.training.process import train_in_process
from napari_medsynth.notify import report_error
from napari_medsynth.widgets.lesions.background import BackgroundSection
from napari_medsynth.widgets.lesions.common import DockLayers, Section, chosen_item, reported, row
from napari_medsynth.widgets.settings_form import SettingsForm
from napari_medsynth.workers import TRAIN_THREADS, BackgroundRun, Failed, RunState

SHUTDOWN_TIMEOUT_S = 60.0
SINGAN_FILES = "SinGAN (*.safetensors)"


class LesionModelSection(Section):
    def __init__(self, viewer: Any, layers: DockLayers, background: BackgroundSection) -> None:
        super().__init__(viewer, layers)
        self.background = background
        self.run = BackgroundRun(self)
        self.progress: progress | None = None
        self.generator: LesionGenerator | None = None
        self.finished: Finished | None = None
        """How the last training ended."""

        self.crop_layer = ComboBox(
            name="crop_layer", choices=self._crop_choices, tooltip="A Shapes layer (its selected or last rectangle) or a Labels layer"
        )
        self.label_id = SpinBox(name="label_id", value=1, min=1, max=2**31 - 1, tooltip="Lesion label id (Labels layer)")
        self.settings = SettingsForm(SinGANSettings)
        self.run_options = SettingsForm(SinGANRunOptions)
        self.train_button = PushButton(text="Train SinGAN")
        self.stop_button = PushButton(text="Stop")
        self.load_button = PushButton(text="Load SinGAN…")
        self.save_button = PushButton(text="Save SinGAN…")
        self.status = Label(value="no lesion model")
        self.show_controls(
            "2. Lesion model (SinGAN on one crop)",
            self.crop_layer,
            self.label_id,
            row(self.train_button, self.stop_button),
            row(self.load_button, self.save_button),
            self.status,
            advanced=(self.settings, self.run_options),  # 15 SinGAN settings, with working defaults
        )

        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.run.stop)
        self.load_button.clicked.connect(lambda: self.ask_path("Load SinGAN", SINGAN_FILES, self.load))
        self.save_button.clicked.connect(lambda: self.ask_path("Save SinGAN", SINGAN_FILES, self.save, save=True))
        self.run.state_changed.connect(self._show_state)
        self._show_state(self.run.state)

    def _crop_choices(self, _widget: Any) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self.layers(Shapes, Labels) if layer is not self.dock_layers.danger]

    def crop(self) -> tuple[MedImage, np.ndarray]:
        """The lesion crop the annotator selected, a 2D MedImage in the background's units, modality and
        pixel spacing, and its mask."""
        target = self.background.target()
        plane = self.background.plane(target)
        source = self.crop_layer.value
        if source is None:
            raise InputError("no lesion crop: draw a rectangle in a Shapes layer (or label the lesion) and choose it")
        if isinstance(source, Labels):
            labels = image_plane(np.asarray(source.data), target[1] if source.ndim == 3 else None)
            box = label_box(labels, self.label_id.value)
            values, mask = lesion_crop(plane, box, labels, self.label_id.value)
        else:
            vertices = chosen_item(source, "rectangle")
            pixels = np.array([self.to_pixel(source, v, target[0]) for v in vertices])
            values, mask = lesion_crop(plane, rectangle_box(pixels, plane.shape))
        image = self.background.image(target)
        crop = MedImage(
            values, "yx", tuple(image.spacing[-2:]), modality=image.modality, units=image.units, name=f"{image.name} lesion crop"
        )
        return crop, mask

    def require(self) -> LesionGenerator:
        """The lesion model; InputError saying how to get one when there is none."""
        if self.generator is None:
            raise InputError("no lesion model: train a SinGAN on a crop, or load a saved one")
        return self.generator

    @reported
    def train(self) -> None:
        """Train a SinGAN on the selected crop in a child process, with a progress bar."""
        if self.run.state is not RunState.IDLE:
            raise InputError("a SinGAN is training already; stop it first")
        settings = parse(SinGANSettings, self.settings.values())
        options = parse(SinGANRunOptions, self.run_options.values())
        values, mask = self.crop()
        trainer = partial(train_in_process, threads=TRAIN_THREADS)
        self.run.start(
            lambda control: train_singan(values, mask, settings, run=options, control=control, trainer=trainer),
            self._on_event,
            self._on_trained,
        )

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Started):
            self._close_progress()
            self.progress = progress(total=event.total_steps, desc="Training SinGAN")
            self.status.value = f"training on {event.device}"
        elif isinstance(event, Progress):
            if self.progress is not None:
                self.progress.update(event.step - self.progress.n)
            self.status.value = f"step {event.step}/{event.total_steps} ({event.phase}), rec {event.losses.get('rec', 0):.3g}"
        elif isinstance(event, Samples):
            self.status.value = f"scale done at step {event.step}"
        elif isinstance(event, Finished):
            self.finished = event
            self.status.value = f"training {event.reason} at step {event.step}"
        elif isinstance(event, Failed):
            self.status.value = f"training failed: {type(event.error).__name__}"
            report_error(event.error)

    def _on_trained(self, generator: LesionGenerator | None) -> None:
        """The status ends with the model training made (scales, step, how it ended), not with a progress line."""
        if generator is None:
            return
        scales, total = generator.scales, len(generator.model.shapes)
        text = f"trained SinGAN: {scales} of {total} scales, step {generator.step}"
        if self.finished is not None and self.finished.reason == "stopped":
            text += "; stopped early" + (", the finer scales upsampled" if scales < total else "")
        self._set(generator, text)

    def _set(self, generator: LesionGenerator, text: str) -> None:
        self.generator = generator
        self.status.value = text

    @reported
    def load(self, path: str | Path) -> LesionGenerator:
        generator = load_singan(path)
        self._set(generator, f"loaded {Path(path).name} ({generator.scales} scales)")
        return generator

    @reported
    def save(self, path: str | Path) -> Path:
        saved = save_singan(self.require(), path)
        self.generator = replace(self.generator, path=saved)
        self.status.value = f"saved {saved.name}"
        return saved

    def _show_state(self, state: RunState) -> None:
        self.train_button.enabled = state is RunState.IDLE
        self.stop_button.enabled = state in (RunState.RUNNING, RunState.PAUSED)
        if state is RunState.IDLE:
            self._close_progress()

    def _close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def shutdown(self) -> None:
        """Stop training and wait for it (closing the dock or the viewer)."""
        if self.run.worker is not None and not self.run.shutdown(SHUTDOWN_TIMEOUT_S):
            report_error(RuntimeError(f"SinGAN training did not stop within {SHUTDOWN_TIMEOUT_S:.0f} s"))
        self._close_progress()
