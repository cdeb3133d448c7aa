"""Section 1 of the Lesions dock: the image the lesions go into, and the plane of it that is shown.

The background is an image layer, or one generated here by a background model (a ``vqgan-hdfb`` or
``vqgan`` checkpoint, through `medsynth.lesions.backgrounds.generate_backgrounds` in the plugin's
background runner): it becomes a new layer, labelled synthetic, chosen as the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, SpinBox
from napari.layers import Image

from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.lesions.backgrounds import generate_backgrounds
from medsynth.lesions.scene import plane_of
from napari_medsynth.layers import layer_image, to_layer_data
from napari_medsynth.notify import report_error
from napari_medsynth.widgets.lesions.common import DockLayers, Section, Target, reported
from napari_medsynth.workers import BackgroundRun, Failed, RunState, call

SHUTDOWN_TIMEOUT_S = 30.0


class BackgroundSection(Section):
    def __init__(self, viewer: Any, layers: DockLayers, device: str = "auto") -> None:
        super().__init__(viewer, layers)
        self.device = device
        self.run = BackgroundRun(self)
        self.layer = ComboBox(name="background", choices=self._choices, tooltip="Image the lesions go into")
        self.model_file = FileEdit(
            name="background_model", mode="r", filter="*.safetensors", tooltip="A vqgan-hdfb or vqgan checkpoint"
        )
        self.seed = SpinBox(name="seed", value=0, min=0, max=2**31 - 1, tooltip="Same seed, same background")
        self.generate_button = PushButton(text="Generate background")
        generated = Container(widgets=[self.model_file, self.seed, self.generate_button], label="or generate")
        self.show_controls("1. Background", self.layer, generated)
        self.generate_button.clicked.connect(self.generate)
        self.run.state_changed.connect(self._show_state)

    def _choices(self, _widget: Any) -> list[tuple[str, Image]]:
        heatmap = self.dock_layers.heatmap
        return [(layer.name, layer) for layer in self.layers(Image) if not layer.rgb and layer is not heatmap]

    def target(self) -> Target:
        """The background layer and the slice shown (None for a 2D image)."""
        layer = self.layer.value
        if layer is None:
            raise InputError("no background image: open an image and choose it under Background, or generate one")
        if layer.ndim == 2:
            return layer, None
        if layer.ndim != 3:
            raise InputError(f"{layer.name!r} has {layer.ndim} dimensions; lesions go into a 2D image or a slice of a 3D volume")
        index = int(np.rint(layer.world_to_data(self.viewer.dims.point)[0]))
        return layer, int(np.clip(index, 0, layer.data.shape[0] - 1))

    def plane(self, target: Target) -> np.ndarray:
        """The ``(H, W)`` pixels of `target`, in data units."""
        layer, index = target
        return plane_of(layer.data, index)

    @staticmethod
    def image(target: Target) -> MedImage:
        return layer_image(target[0])

    @reported
    def generate(self) -> None:
        """Sample one background from the chosen model in a worker; it arrives in `_add_background`."""
        path = Path(self.model_file.value or "")
        if not path.is_file():
            problem = "no background model chosen" if str(path) == "." else f"background model {path} is not a file"
            raise InputError(f"{problem}; choose a vqgan-hdfb or vqgan checkpoint")
        if self.run.state is not RunState.IDLE:
            return
        work = call(generate_backgrounds, path, 1, self.seed.value, self.device)
        self.run.start(work, self._on_event, self._add_background)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Failed):
            report_error(event.error)

    def _add_background(self, images: list[MedImage] | None) -> None:
        if not images:
            return
        data, kwargs, _ = to_layer_data(images[0])
        layer = self.viewer.add_image(data, **kwargs)
        self.reset_choices()
        self.layer.value = layer

    def _show_state(self, state: RunState) -> None:
        self.generate_button.enabled = state is RunState.IDLE

    def shutdown(self) -> None:
        """Wait for a background being generated (closing the dock or the viewer); its result is dropped."""
        if not self.run.shutdown(SHUTDOWN_TIMEOUT_S):
            report_error(RuntimeError(f"generating the background did not end within {SHUTDOWN_TIMEOUT_S:.0f} s"))
