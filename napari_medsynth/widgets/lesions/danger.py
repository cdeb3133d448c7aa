"""Section 3 of the Lesions dock: the danger zone, a Labels layer over the background (0 forbidden,
shown red; 1 permissible), made all permissible to paint into, bootstrapped by the modality's rules,
loaded from a mask, or predicted by a ``danger-unet`` checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import PushButton
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap

from medsynth.data.geometry import image_plane
from medsynth.errors import InputError
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.learned import danger_for, load_danger_source
from napari_medsynth.widgets.lesions.background import BackgroundSection
from napari_medsynth.widgets.lesions.common import DockLayers, Section, Target, over, reported, row

DANGER_NAME = "danger zone (0 forbidden)"
# Forbidden pixels (0) in opaque red so that they stand out; permissible ones (1) faintly green.
DANGER_COLORS = {0: (1.0, 0.15, 0.15, 1.0), 1: (0.2, 0.9, 0.3, 0.2), None: (0.0, 0.0, 0.0, 0.0)}
DANGER_OPACITY = 0.45


class DangerSection(Section):
    def __init__(self, viewer: Any, layers: DockLayers, background: BackgroundSection) -> None:
        super().__init__(viewer, layers)
        self.background = background
        self.new_button = PushButton(text="New (all permissible)")
        self.rules_button = PushButton(text="From modality rules")
        self.load_button = PushButton(text="Load…")
        self.show_controls("3. Danger zone", row(self.new_button, self.rules_button, self.load_button))
        self.new_button.clicked.connect(self.new)
        self.rules_button.clicked.connect(self.from_rules)
        self.load_button.clicked.connect(
            lambda: self.ask_path("Load danger zone", "Masks or danger-unet checkpoints (*)", self.load)
        )

    @property
    def layer(self) -> Labels | None:
        return self.dock_layers.danger

    @reported
    def new(self) -> Labels:
        """An all-permissible danger zone to paint the forbidden parts into (paint label 0)."""
        layer, _ = self.background.target()
        return self._show(np.ones(layer.data.shape, dtype=np.uint8))

    @reported
    def from_rules(self) -> Labels:
        """The danger zone from the modality's intensity and morphology rules (to correct by hand)."""
        return self._show(bootstrap_danger(self.background.image(self.background.target())))

    @reported
    def load(self, path: str | Path) -> Labels:
        """A danger zone from a mask file (1 permissible, 0 forbidden) on the background's grid, or
        predicted by a danger-unet checkpoint."""
        return self._show(danger_for(load_danger_source(path), self.background.image(self.background.target())))

    def _show(self, mask: np.ndarray) -> Labels:
        layer, _ = self.background.target()
        if self.shown(self.layer, mask.shape):
            self.layer.data = mask
        else:
            colormap = DirectLabelColormap(color_dict=DANGER_COLORS)
            danger = Labels(mask, name=DANGER_NAME, opacity=DANGER_OPACITY, colormap=colormap, **over(layer, mask.ndim))
            self.add_own("danger", danger, keep_selection=False)  # made active: the annotator paints it next
        # Painting with label 0 marks forbidden pixels, label 1 permissible ones.
        self.layer.selected_label = 0
        return self.layer

    def permissible(self, target: Target) -> np.ndarray:
        """``(H, W)`` boolean: permissible pixels of the danger zone in the plane of `target`."""
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            raise InputError("no danger zone: create one (New, From modality rules or Load) before placing lesions")
        danger = np.asarray(layer.data)
        if danger.shape != target[0].data.shape:
            raise InputError(
                f"the danger zone has shape {danger.shape} but {target[0].name!r} has {target[0].data.shape}; make a new one for this image"
            )
        return image_plane(danger, target[1]) == 1
