"""What the sections of the Lesions dock share: the layers the dock made, the plane lesions go into,
napari coordinates as pixels, and how a user action reports its errors."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
from magicgui.widgets import Container, Label, PushButton
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from medsynth.errors import InputError, MedsynthError
from napari_medsynth.notify import report_error
from napari_medsynth.widgets.dock import advanced_group, reset_button

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer, Points

    from napari_medsynth.widgets.settings_form import SettingsForm

P = ParamSpec("P")
T = TypeVar("T")

Target = tuple["Image", "int | None"]
"""The background layer and the slice of it that is shown (None for a 2D image)."""


@dataclass
class DockLayers:
    """The layers the dock made, so that its layer lists leave them out where they make no sense."""

    danger: Labels | None = None
    heatmap: Image | None = None
    candidates: Points | None = None
    result: Image | None = None
    labels: Labels | None = None


@contextmanager
def selection_kept(viewer: napari.Viewer) -> Iterator[None]:
    """Keep the selected and the active layer: napari makes a new layer active, and the annotator's
    next click would then go to it instead of to the layer they were placing with."""
    selected, active = set(viewer.layers.selection), viewer.layers.selection.active
    try:
        yield
    finally:
        viewer.layers.selection.clear()
        viewer.layers.selection.update(layer for layer in selected if layer in viewer.layers)
        if active in viewer.layers:
            viewer.layers.selection.active = active


def reported(method: Callable[P, T]) -> Callable[P, T | None]:
    """Run a user action; medsynth and file-system errors become a notification and the action returns None."""

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> T | None:
        try:
            return method(*args, **kwargs)
        except (MedsynthError, OSError) as exc:
            report_error(exc)
            return None

    return run


class Section(QWidget):
    """One step of the workflow: a titled magicgui container of its controls (`show_controls`)."""

    controls: Container

    def __init__(self, viewer: napari.Viewer, layers: DockLayers) -> None:
        super().__init__()
        self.viewer = viewer
        self.dock_layers = layers

    def show_controls(self, title: str, *widgets: Any, advanced: tuple[SettingsForm, ...] = ()) -> None:
        """Show `widgets` (magicgui) under `title`, then the `advanced` forms folded under "Advanced settings"
        with a "Reset defaults" button."""
        self.controls = Container(widgets=[Label(value=f"<b>{title}</b>"), *widgets])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.controls.native)
        if advanced:

            def reset() -> None:
                for form in advanced:
                    form.reset()

            natives = [form.native for form in advanced]
            layout.addWidget(advanced_group("Advanced settings", *natives, reset_button(reset)))

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer lists (napari calls this when layers are added, removed or renamed)."""
        self.controls.reset_choices()

    def add_own(self, role: str, layer: Layer, index: int | None = None, *, keep_selection: bool = True) -> Layer:
        """Add a layer the dock made at `index` (default: on top), as the `DockLayers` field `role`.

        The field is set first, so that the layer lists, which napari refreshes as the layer is added,
        already leave it out; with `keep_selection` the annotator's active layer stays active.
        """
        setattr(self.dock_layers, role, layer)
        index = len(self.viewer.layers) if index is None else index
        if keep_selection:
            with selection_kept(self.viewer):
                self.viewer.layers.insert(index, layer)
        else:
            self.viewer.layers.insert(index, layer)
        return layer

    def layers(self, *kinds: type) -> list[Layer]:
        return [layer for layer in self.viewer.layers if isinstance(layer, kinds)]

    def shown(self, layer: Layer | None, shape: tuple[int, ...] | None) -> bool:
        """Whether `layer` is still in the viewer and, for a `shape`, holds data of that shape (else a new layer is made)."""
        return layer is not None and layer in self.viewer.layers and (shape is None or np.shape(layer.data) == shape)

    def to_pixel(self, layer: Layer, coords: np.ndarray, image: Image) -> np.ndarray:
        """Data coordinates of `layer` -> ``(y, x)`` coordinates (float) of the background `image`.

        They become pixels in the core (`pixel_index`, `rectangle_box`), which drops float32 noise.
        """
        world = np.asarray(layer.data_to_world(coords), dtype=float)
        point = np.asarray(self.viewer.dims.point, dtype=float)
        point[-len(world) :] = world
        return np.asarray(image.world_to_data(point), dtype=float)[-2:]

    def ask_path(self, title: str, filter_: str, action: Callable[[str], Any], *, save: bool = False) -> None:
        ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = ask(self, title, str(Path.home()), filter_)
        if path:
            action(path)


def row(*buttons: PushButton) -> Container:
    return Container(widgets=list(buttons), layout="horizontal", labels=False)


def chosen_item(layer: Layer, kind: str) -> np.ndarray:
    """The selected (else the last) point ``(D,)`` or shape's vertices ``(N, D)`` of a Points or Shapes layer."""
    if len(layer.data) == 0:
        raise InputError(f"{layer.name!r} is empty; add a {kind} to it first")
    selected = sorted(layer.selected_data)
    return np.asarray(layer.data[selected[-1] if selected else -1], dtype=float)


def over(layer: Image, ndim: int) -> dict[str, Any]:
    """scale, translate and affine of `layer`'s last `ndim` axes, for layers drawn over it."""
    affine = np.asarray(layer.affine.affine_matrix)[-ndim - 1 :, -ndim - 1 :]
    return {"scale": tuple(layer.scale[-ndim:]), "translate": tuple(layer.translate[-ndim:]), "affine": affine}
