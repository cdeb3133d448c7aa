"""The Lesions dock: its five sections, one per step of the annotator's workflow, wired together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QWidget

from napari_medsynth.widgets.dock import scrolled_content
from napari_medsynth.widgets.lesions.background import BackgroundSection
from napari_medsynth.widgets.lesions.common import DockLayers
from napari_medsynth.widgets.lesions.danger import DangerSection
from napari_medsynth.widgets.lesions.model import LesionModelSection
from napari_medsynth.widgets.lesions.placement import PlacementSection
from napari_medsynth.widgets.lesions.prior import PriorSection

if TYPE_CHECKING:
    import napari


class LesionWidget(QWidget):
    """Place SinGAN lesions into an image layer; see `napari_medsynth.widgets.lesions`."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.dock_layers = DockLayers()
        self.background = BackgroundSection(napari_viewer, self.dock_layers)
        self.model = LesionModelSection(napari_viewer, self.dock_layers, self.background)
        self.danger = DangerSection(napari_viewer, self.dock_layers, self.background)
        self.prior = PriorSection(napari_viewer, self.dock_layers, self.background)
        self.placement = PlacementSection(
            napari_viewer, self.dock_layers, self.background, self.model, self.danger, self.prior
        )
        self.sections = (self.background, self.model, self.danger, self.prior, self.placement)
        layout = scrolled_content(self)  # the five sections are taller than a screen
        for section in self.sections:
            layout.addWidget(section)
        layout.addStretch()

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer lists (napari calls this when layers are added, removed or renamed)."""
        for section in self.sections:
            section.reset_choices()

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop training and background generation and wait for them (closing the widget or the viewer)."""
        self.background.shutdown()
        self.model.shutdown()
