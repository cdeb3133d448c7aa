"""Section 1 of the Lesions dock: the image the lesions go into, and the plane of it that is shown."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image

from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.lesions.scene import plane_of
from napari_medsynth.layers import layer_image
from napari_medsynth.widgets.lesions.common import DockLayers, Section, Target


class BackgroundSection(Section):
    def __init__(self, viewer: Any, layers: DockLayers) -> None:
        super().__init__(viewer, layers)
        self.layer = ComboBox(name="background", choices=self._choices, tooltip="Image the lesions go into")
        self.show_controls("1. Background", self.layer)

    def _choices(self, _widget: Any) -> list[tuple[str, Image]]:
        heatmap = self.dock_layers.heatmap
        return [(layer.name, layer) for layer in self.layers(Image) if not layer.rgb and layer is not heatmap]

    def target(self) -> Target:
        """The background layer and the slice shown (None for a 2D image)."""
        layer = self.layer.value
        if layer is None:
            raise InputError("no background image: open an image and choose it under Background")
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
