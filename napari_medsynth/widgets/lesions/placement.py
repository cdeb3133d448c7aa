"""Section 5 of the Lesions dock: placing lesions and showing their fusion, Re-fuse, Undo, Export.

Placement is by hand (a point clicked into the hand Points layer places a lesion at once; the
selected or last point or box of a Points or Shapes layer with "Place") or k sampled from ``C_final``.
The placements, their fusion and the Undo history are a `medsynth.lesions.session.LesionSession` of
the shown plane; this section turns clicks and layers into its arguments and shows each committed
change in a NEW synthetic image layer and an editable lesion Labels layer. Moving or deleting a
lesion label and pressing Re-fuse applies the edit. The source layer is never modified. Lesions on
another background or slice start another session (and new result layers) once one is placed there;
a refused placement keeps the earlier session and its Undo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Label, PushButton
from napari.layers import Labels, Layer, Points, Shapes
from napari.layers.base import ActionType
from qtpy.QtWidgets import QFileDialog

from medsynth.data.geometry import rectangle_box
from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.lesions.scene import Scene, box_placement
from medsynth.lesions.session import LesionSession, PlacementOptions
from medsynth.settings import parse
from napari_medsynth.layers import to_layer_data
from napari_medsynth.notify import report_error
from napari_medsynth.widgets.lesions.background import BackgroundSection
from napari_medsynth.widgets.lesions.common import DockLayers, Section, Target, chosen_item, over, reported, row
from napari_medsynth.widgets.lesions.danger import DangerSection
from napari_medsynth.widgets.lesions.model import LesionModelSection
from napari_medsynth.widgets.lesions.prior import PriorSection
from napari_medsynth.widgets.settings_form import SettingsForm

LABEL_CONTOUR_PX = 1
"""Outline width of the lesion labels layer (napari's ``contour``; 0 fills the labels)."""


class PlacementSection(Section):
    def __init__(
        self,
        viewer: Any,
        layers: DockLayers,
        background: BackgroundSection,
        model: LesionModelSection,
        danger: DangerSection,
        prior: PriorSection,
    ) -> None:
        super().__init__(viewer, layers)
        self.background, self.model, self.danger, self.prior = background, model, danger, prior
        self.session: LesionSession | None = None
        self.session_target: Target | None = None
        self._hand_points: Points | None = None

        self.hand_layer = ComboBox(
            name="hand_layer", choices=self._hand_choices, tooltip="Points or Shapes layer: its selected (else last) point or box"
        )
        self.place_button = PushButton(text="Place at point / box")
        self.options = SettingsForm(PlacementOptions)
        self.sample_button = PushButton(text="Sample k lesions")
        self.re_fuse_button = PushButton(text="Re-fuse", tooltip="Apply moved or deleted lesion labels")
        self.undo_button = PushButton(text="Undo")
        self.export_button = PushButton(text="Export…")
        self.status = Label(value="")
        self.show_controls(
            "5. Placement and fusion",
            self.hand_layer,
            self.place_button,
            self.options,
            self.sample_button,
            row(self.re_fuse_button, self.undo_button),
            self.export_button,
            self.status,
        )
        self.place_button.clicked.connect(self.place_by_hand)
        self.sample_button.clicked.connect(self.sample)
        self.re_fuse_button.clicked.connect(self.re_fuse)
        self.undo_button.clicked.connect(self.undo)
        self.export_button.clicked.connect(self._ask_export)
        self.hand_layer.changed.connect(self._follow_hand_layer)
        self._follow_hand_layer(self.hand_layer.value)

    def _hand_choices(self, _widget: Any) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self.layers(Points, Shapes)]

    @property
    def scene(self) -> Scene:
        return self.session.scene if self.session is not None else ()

    # -- placing -----------------------------------------------------------------------------------

    @reported
    def place_by_hand(self) -> Scene:
        """Place one lesion at the selected (else last) point or box of the hand layer; refused in the danger zone."""
        layer = self.hand_layer.value
        if layer is None:
            raise InputError("no placement layer: add a Points layer (click a point) or a Shapes layer (drag a box) and choose it")
        return self.place_at(layer, chosen_item(layer, "point" if isinstance(layer, Points) else "rectangle"))

    def place_at(self, layer: Layer, item: np.ndarray) -> Scene:
        """Place one lesion at a point ``(D,)`` of a Points layer, or fitted into a box ``(N, D)`` of a Shapes layer."""
        target = self.background.target()
        generator = self.model.require()
        options = parse(PlacementOptions, self.options.values())
        permissible = self.danger.permissible(target)
        if item.ndim == 1:
            centre, size = tuple(self.to_pixel(layer, item, target[0])), None
        else:
            box = rectangle_box(np.array([self.to_pixel(layer, v, target[0]) for v in item]), permissible.shape)
            centre, size = box_placement(generator, box)
        return self._session_for(target).place(generator, permissible, centre, options, size)

    @reported
    def sample(self) -> Scene:
        """Sample k lesions into ``C_final`` (the prior's candidates, else every permissible place)."""
        target = self.background.target()
        generator = self.model.require()
        options = parse(PlacementOptions, self.options.values())
        permissible = self.danger.permissible(target)
        session = self._session_for(target)
        return session.sample(generator, permissible, options, self.prior.model, self.prior.parsed_options())

    @reported
    def re_fuse(self) -> Scene:
        """Fuse again after the annotator moved or deleted lesion labels; a lesion moved onto forbidden pixels is refused."""
        labels = self.dock_layers.labels
        if self.session is None or not self.shown(labels, None):
            raise InputError("nothing to re-fuse: place lesions first (the lesion labels layer is missing)")
        blend = parse(PlacementOptions, self.options.values()).fusion()
        return self.session.re_fuse(np.asarray(labels.data), self.danger.permissible(self.session_target), blend)

    @reported
    def undo(self) -> Scene:
        """Go back to the previous placements and their fusion, with the blend they were fused with."""
        if self.session is None:
            raise InputError("nothing to undo")
        return self.session.undo()

    def _session_for(self, target: Target) -> LesionSession:
        """The session of `target`'s plane: the current one, or a new one that becomes current once it commits a placement."""
        if self.session is not None and self.session_target[0] is target[0] and self.session_target[1] == target[1]:
            return self.session
        session = LesionSession(self.background.image(target), target[1])
        session.subscribe(lambda changed: self._show(changed, target))
        return session

    # -- showing the fusion ------------------------------------------------------------------------

    def _show(self, session: LesionSession, target: Target) -> None:
        """Show a committed change of `session`; the first change of a new session replaces the current one (and its layers)."""
        if session is not self.session:
            self.session, self.session_target = session, target
            self.dock_layers.result = self.dock_layers.labels = None
        background = target[0]
        above_background = self.viewer.layers.index(background) + 1 if background in self.viewer.layers else None
        self._update_layer("result", session.fused.image, background, above_background)
        self._update_layer("labels", session.fused.labels, background)
        ids = [p.label_id for p in session.scene]
        self.status.value = f"{len(ids)} lesions (ids {', '.join(map(str, ids)) or 'none'})"

    def _update_layer(self, role: str, image: MedImage, background: Layer, index: int | None = None) -> Layer:
        """Show `image` in the dock's `role` layer (``"result"`` or ``"labels"``), made at `index` if it is gone.

        A new layer lies exactly over `background`, wherever that was placed in the world. The fused
        image goes right above the background (`index`), under the danger zone and the location prior,
        which stay visible; the lesion labels go on top, to edit, drawn as outlines. The active layer
        stays active, so the next click still places a lesion.
        """
        layer = getattr(self.dock_layers, role)
        data, kwargs, layer_type = to_layer_data(image)
        if self.shown(layer, data.shape):
            layer.data = data
            layer.metadata = kwargs["metadata"]
            return layer
        layer = Layer.create(data, {**kwargs, **over(background, data.ndim)}, layer_type)
        if isinstance(layer, Labels):
            layer.contour = LABEL_CONTOUR_PX  # outlines: the fused lesions stay visible under their labels
        return self.add_own(role, layer, index)

    # -- placing by clicking -----------------------------------------------------------------------

    def _on_hand_points(self, event: Any) -> None:
        """A point clicked into the hand Points layer places a lesion there at once; a refused point is removed again."""
        if getattr(event, "action", None) != ActionType.ADDED:
            return
        refused = []
        for index in event.data_indices:
            try:
                self.place_at(event.source, np.asarray(event.source.data[index], dtype=float))
            except Exception as exc:  # noqa: BLE001 - any failure of a click is shown; the viewer must survive it
                report_error(exc)
                refused.append(index)
        if refused:
            event.source.data = np.delete(np.asarray(event.source.data), refused, axis=0)

    def _follow_hand_layer(self, layer: Layer | None) -> None:
        if self._hand_points is not None:
            self._hand_points.events.data.disconnect(self._on_hand_points)
        self._hand_points = layer if isinstance(layer, Points) else None
        if self._hand_points is not None:
            self._hand_points.events.data.connect(self._on_hand_points)

    # -- export ------------------------------------------------------------------------------------

    @reported
    def export(self, folder: str | Path) -> list[Path]:
        """Write the fused image and lesion labels: NIfTI, DICOM, DICOM-SEG and a JSON manifest, all marked synthetic."""
        if self.session is None:
            raise InputError("nothing to export: place lesions first")
        labels = self.dock_layers.labels
        shown = np.asarray(labels.data) if self.shown(labels, None) else None
        written = self.session.export(folder, parse(PlacementOptions, self.options.values()), shown)
        self.status.value = f"exported {len(written)} files to {folder}"
        return written

    def _ask_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export lesions to folder", str(Path.home()))
        if folder:
            self.export(folder)
