"""Section 4 of the Lesions dock: the location prior, where lesions are likely on the background plane.

Fitted to historical lesion label maps (layers or files), or loaded: a saved prior (JSON) or a
``lesion-heatmap`` checkpoint that predicts the heatmap of the plane. Its heatmap and top-k
candidate points are shown over the background; sampled lesions go to those candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import FileEdit, Label, PushButton, Select
from napari.layers import Image, Labels, Points

from medsynth.errors import InputError
from medsynth.io import read_image
from medsynth.lesions.learned import load_location_model
from medsynth.lesions.location import LocationModel, PriorOptions, fit_location_prior, prior_candidates
from medsynth.settings import parse
from napari_medsynth.widgets.lesions.background import BackgroundSection
from napari_medsynth.widgets.lesions.common import DockLayers, Section, over, reported, row
from napari_medsynth.widgets.settings_form import SettingsForm

HEATMAP_OPACITY = 0.5


class PriorSection(Section):
    def __init__(self, viewer: Any, layers: DockLayers, background: BackgroundSection) -> None:
        super().__init__(viewer, layers)
        self.background = background
        self.model: LocationModel | None = None
        self.label_layers = Select(name="prior_layers", choices=self._label_choices, tooltip="Historical lesion label layers")
        self.files = FileEdit(
            name="prior_files", mode="rm", tooltip="Historical lesion label maps: NIfTI or DICOM label images (not DICOM-SEG)"
        )
        self.options = SettingsForm(PriorOptions)
        self.show_button = PushButton(text="Show location prior")
        self.load_button = PushButton(
            text="Load location model…", tooltip="A saved location prior (JSON) or a lesion-heatmap checkpoint"
        )
        self.status = Label(value="")
        self.show_controls(
            "4. Location prior", self.label_layers, self.files, self.options, row(self.show_button, self.load_button), self.status
        )
        self.show_button.clicked.connect(self.fit)
        self.load_button.clicked.connect(
            lambda: self.ask_path("Load location model", "Location priors or lesion-heatmap checkpoints (*)", self.load)
        )

    def _label_choices(self, _widget: Any) -> list[tuple[str, Labels]]:
        own = (self.dock_layers.danger, self.dock_layers.labels)
        return [(layer.name, layer) for layer in self.layers(Labels) if layer not in own]

    def parsed_options(self) -> PriorOptions:
        return parse(PriorOptions, self.options.values())

    @reported
    def fit(self) -> LocationModel:
        """Fit the prior to the chosen label layers and files; show its heatmap and top-k candidates."""
        maps = [np.asarray(layer.data) for layer in self.label_layers.value]
        maps += [np.asarray(read_image(path, as_label=True).array) for path in self.files.value]
        if not maps:
            raise InputError("no historical lesions: choose label layers or label files for the location prior")
        return self._show(fit_location_prior(maps))

    @reported
    def load(self, path: str | Path) -> LocationModel:
        """A saved location prior (JSON) or a lesion-heatmap checkpoint (its heatmap of the plane); shown like a fitted prior."""
        return self._show(load_location_model(path))

    def _show(self, model: LocationModel) -> LocationModel:
        target = self.background.target()
        heat, candidates, _ = prior_candidates(model, self.background.plane(target), self.parsed_options())
        geometry = over(target[0], 2)
        layers = self.dock_layers
        if self.shown(layers.heatmap, heat.shape):
            layers.heatmap.data = heat
            layers.heatmap.contrast_limits = (0.0, float(heat.max()))
        else:
            look = {"colormap": "inferno", "blending": "additive", "opacity": HEATMAP_OPACITY}
            heatmap = Image(heat, name="location prior", **look, **geometry)
            self.add_own("heatmap", heatmap)
        if self.shown(layers.candidates, None):
            layers.candidates.data = candidates
        else:
            points = Points(candidates, name="lesion candidates", symbol="cross", face_color="cyan", size=4, **geometry)
            self.add_own("candidates", points)
        self.model = model
        self.status.value = f"{model.describe()}; {len(candidates)} candidates"
        return model
