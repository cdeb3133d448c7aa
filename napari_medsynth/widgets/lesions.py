"""The Lesions dock widget: the annotator's lesion-synthesis workflow of `medsynth.lesions`.

Background image (a 2D layer, or the current slice of a volume) -> lesion crop (a Shapes rectangle,
or a label's bounding box) -> SinGAN trained in a worker (or loaded) -> danger zone (a Labels layer,
0 forbidden shown red, 1 permissible; painted, bootstrapped by the modality rules, loaded from a mask,
or predicted by a ``danger-unet`` checkpoint) -> location prior (heatmap and top-k candidate points,
fitted to historical label maps, or loaded: a saved prior or a ``lesion-heatmap`` checkpoint that
predicts the heatmap of the plane) -> placement by hand
(the last or selected point or box of a layer) or k sampled from ``C_final`` -> fusion into a NEW
synthetic image layer and an editable lesion Labels layer -> Re-fuse after moving or deleting a
lesion label, Undo -> export (NIfTI, DICOM and DICOM-SEG, marked synthetic).

The widget is thin: the computation is in `medsynth.lesions`. What is placed lives in `Scene`, a
tuple of immutable `Placement` values; every change commits a new scene, keeps the previous one in
a short history (Undo), and shows the fusion of the scene in the result layers. The source layer is
never modified. Training runs in a worker that never touches layers or widgets.
"""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Select, SpinBox
from napari.layers import Image, Labels, Points, Shapes
from napari.layers.base import ActionType
from napari.utils import progress
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

import medsynth
from medsynth.atomic import write_text
from medsynth.data.geometry import image_plane, label_box, rectangle_box
from medsynth.errors import InputError, MedsynthError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.lesions.batch import label_geometry
from medsynth.lesions.crop import lesion_crop
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.fusion import BLENDS, Lesion, fuse
from medsynth.lesions.learned import danger_for, load_danger_source, load_location_model
from medsynth.lesions.location import LocationModel, fit_location_prior, top_candidates
from medsynth.lesions.placement import box_centre, place_by_hand, sample_placements
from medsynth.lesions.scene import (
    Placement,
    Scene,
    assemble,
    check_compatible,
    check_scene,
    draw_lesion,
    edited_scene,
    lesion_seed,
    placed_mask,
)
from medsynth.lesions.singan_training import (
    RECIPE,
    LesionGenerator,
    SinGANSettings,
    load_singan,
    save_singan,
    train_singan,
)
from medsynth.settings import parse, setting
from medsynth.training.control import TrainControl
from medsynth.training.events import Finished, Progress, Samples, Started
from napari_medsynth.layers import layer_image, to_layer_data
from napari_medsynth.notify import report_error
from napari_medsynth.widgets.settings_form import SettingsForm
from napari_medsynth.workers import Failed, RunState, TrainingRun

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import napari
    from napari.layers import Layer

P = ParamSpec("P")
T = TypeVar("T")
HISTORY = 20
"""Scenes kept for Undo."""
SHUTDOWN_TIMEOUT_S = 60.0
DANGER_NAME = "danger zone (0 forbidden)"
# Forbidden pixels (0) in opaque red so that they stand out; permissible ones (1) faintly green.
DANGER_COLORS = {0: (1.0, 0.15, 0.15, 1.0), 1: (0.2, 0.9, 0.3, 0.2), None: (0.0, 0.0, 0.0, 0.0)}
DANGER_OPACITY = 0.45
HEATMAP_OPACITY = 0.5


@dataclass
class PlacementOptions:
    """How lesions are drawn, placed and fused."""

    count: int = setting(3, "Lesions to sample (k)", min=1, max=100)
    seed: int = setting(0, "Random seed of the lesions and of their positions", min=0, max=2**31 - 1)
    min_spacing: float = setting(
        10.0, "Minimum distance of a sampled lesion's centre from every other lesion's (px)", min=0.0, max=10_000.0
    )
    size: float = setting(1.0, "Lesion size relative to the training crop (a dragged box sets its own)", min=0.1, max=8.0)
    variability: int = setting(
        0, "Scale where fresh noise starts: 0 draws whole new lesions, higher keeps the crop's layout", min=0, max=32
    )
    blend: str = setting("published", "Fusion: the published hard seam, or feathered", choices=BLENDS)
    feather_px: float = setting(3.0, "Feather width of the feathered blend (px)", min=0.5, max=100.0)


@dataclass
class PriorOptions:
    """How the location prior shows its candidates."""

    top_k: int = setting(10, "Candidate positions: the top-k peaks of the prior", min=1, max=10_000)
    min_distance: int = setting(5, "Minimum distance between candidates (px)", min=1, max=10_000)


@dataclass(frozen=True)
class Blend:
    """How a scene was fused; kept with the scene so that Undo shows exactly the earlier fusion."""

    name: str = "published"
    feather_px: float = 3.0


@dataclass(frozen=True)
class Trained:
    """Last item of a training run: the trained model (the core generator's return value)."""

    generator: LesionGenerator


def training_events(values: MedImage, mask: np.ndarray, settings: SinGANSettings, control: TrainControl) -> Iterator[Any]:
    """`train_singan`'s events, then `Trained` with the model it returns (runs in the worker)."""
    generator = yield from train_singan(values, mask, settings, control=control)
    yield Trained(generator)


def _reported(method: Callable[P, T]) -> Callable[P, T | None]:
    """Run a user action; medsynth and file-system errors become a notification and the action returns None."""

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> T | None:
        try:
            return method(*args, **kwargs)
        except (MedsynthError, OSError) as exc:
            report_error(exc)
            return None

    return run


class LesionWidget(QWidget):
    """Place SinGAN lesions into an image layer; see the module docstring."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.run = TrainingRun()
        self.progress: progress | None = None
        self.generator: LesionGenerator | None = None
        self.prior: LocationModel | None = None
        self.danger_layer: Labels | None = None
        self.heatmap_layer: Image | None = None
        self.candidates_layer: Points | None = None
        self.result_layer: Image | None = None
        self.labels_layer: Labels | None = None
        self.scene: Scene = ()
        self.blend = Blend()
        self.history: deque[tuple[Scene, Blend]] = deque(maxlen=HISTORY)
        self._session: tuple[Image, int | None] | None = None
        self._fused: tuple[MedImage, MedImage] | None = None
        self._hand_points: Points | None = None

        self.background = ComboBox(name="background", choices=self._image_choices, tooltip="Image the lesions go into")
        self.crop_layer = ComboBox(
            name="crop_layer", choices=self._crop_choices, tooltip="A Shapes layer (its selected or last rectangle) or a Labels layer"
        )
        self.label_id = SpinBox(name="label_id", value=1, min=1, max=2**31 - 1, tooltip="Lesion label id (Labels layer)")
        self.training = SettingsForm(SinGANSettings)
        self.train_button = PushButton(text="Train SinGAN")
        self.stop_button = PushButton(text="Stop")
        self.load_model_button = PushButton(text="Load SinGAN…")
        self.save_model_button = PushButton(text="Save SinGAN…")
        self.model_status = Label(value="no lesion model")
        self.new_danger_button = PushButton(text="New (all permissible)")
        self.bootstrap_button = PushButton(text="From modality rules")
        self.load_danger_button = PushButton(text="Load…")
        self.prior_layers = Select(name="prior_layers", choices=self._prior_choices, tooltip="Historical lesion label layers")
        self.prior_files = FileEdit(
            name="prior_files", mode="rm", tooltip="Historical lesion label maps: NIfTI or DICOM label images (not DICOM-SEG)"
        )
        self.prior_options = SettingsForm(PriorOptions)
        self.prior_button = PushButton(text="Show location prior")
        self.load_prior_button = PushButton(
            text="Load location model…", tooltip="A saved location prior (JSON) or a lesion-heatmap checkpoint"
        )
        self.hand_layer = ComboBox(
            name="hand_layer", choices=self._hand_choices, tooltip="Points or Shapes layer: its selected (else last) point or box"
        )
        self.place_button = PushButton(text="Place at point / box")
        self.options = SettingsForm(PlacementOptions)
        self.sample_button = PushButton(text="Sample k lesions")
        self.refuse_button = PushButton(text="Re-fuse", tooltip="Apply moved or deleted lesion labels")
        self.undo_button = PushButton(text="Undo")
        self.export_button = PushButton(text="Export…")
        self.status = Label(value="")

        sections = [
            _section("1. Background", self.background),
            _section(
                "2. Lesion model (SinGAN on one crop)",
                self.crop_layer,
                self.label_id,
                self.training,
                _row(self.train_button, self.stop_button),
                _row(self.load_model_button, self.save_model_button),
                self.model_status,
            ),
            _section("3. Danger zone", _row(self.new_danger_button, self.bootstrap_button, self.load_danger_button)),
            _section(
                "4. Location prior",
                self.prior_layers,
                self.prior_files,
                self.prior_options,
                _row(self.prior_button, self.load_prior_button),
            ),
            _section(
                "5. Placement and fusion",
                self.hand_layer,
                self.place_button,
                self.options,
                self.sample_button,
                _row(self.refuse_button, self.undo_button),
                self.export_button,
                self.status,
            ),
        ]
        layout = QVBoxLayout(self)
        for section in sections:
            layout.addWidget(section.native)
        layout.addStretch()
        self._sections = sections

        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.run.stop)
        self.load_model_button.clicked.connect(lambda: self._ask_path("Load SinGAN", "SinGAN (*.safetensors)", self.load_model))
        self.save_model_button.clicked.connect(
            lambda: self._ask_path("Save SinGAN", "SinGAN (*.safetensors)", self.save_model, save=True)
        )
        self.new_danger_button.clicked.connect(self.new_danger)
        self.bootstrap_button.clicked.connect(self.bootstrap_danger)
        self.load_danger_button.clicked.connect(
            lambda: self._ask_path("Load danger zone", "Masks or danger-unet checkpoints (*)", self.load_danger)
        )
        self.prior_button.clicked.connect(self.show_prior)
        self.load_prior_button.clicked.connect(
            lambda: self._ask_path("Load location model", "Location priors or lesion-heatmap checkpoints (*)", self.load_prior)
        )
        self.place_button.clicked.connect(self.place_by_hand)
        self.sample_button.clicked.connect(self.sample)
        self.refuse_button.clicked.connect(self.refuse)
        self.undo_button.clicked.connect(self.undo)
        self.export_button.clicked.connect(self._ask_export)
        self.hand_layer.changed.connect(self._follow_hand_layer)
        self.run.state_changed.connect(self._show_state)
        self._show_state(self.run.state)
        self._follow_hand_layer(self.hand_layer.value)

    # -- layer choices ----------------------------------------------------------------------------

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer lists (napari calls this when layers are added, removed or renamed)."""
        for section in self._sections:
            section.reset_choices()

    def _layers(self, *kinds: type) -> list[Layer]:
        return [layer for layer in self.viewer.layers if isinstance(layer, kinds)]

    def _image_choices(self, _widget: Any) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._layers(Image) if not layer.rgb and layer is not self.heatmap_layer]

    def _crop_choices(self, _widget: Any) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self._layers(Shapes, Labels) if layer is not self.danger_layer]

    def _prior_choices(self, _widget: Any) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self._layers(Labels) if layer not in (self.danger_layer, self.labels_layer)]

    def _hand_choices(self, _widget: Any) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self._layers(Points, Shapes)]

    # -- the background plane ----------------------------------------------------------------------

    def _target(self) -> tuple[Image, int | None]:
        """The background layer and the slice shown (None for a 2D image)."""
        layer = self.background.value
        if layer is None:
            raise InputError("no background image: open an image and choose it under Background")
        if layer.ndim == 2:
            return layer, None
        if layer.ndim != 3:
            raise InputError(f"{layer.name!r} has {layer.ndim} dimensions; lesions go into a 2D image or a slice of a 3D volume")
        index = int(np.rint(layer.world_to_data(self.viewer.dims.point)[0]))
        return layer, int(np.clip(index, 0, layer.data.shape[0] - 1))

    def _plane(self, target: tuple[Image, int | None]) -> np.ndarray:
        layer, index = target
        return image_plane(np.asarray(layer.data if index is None else layer.data[index]))

    def _to_pixel(self, layer: Layer, coords: np.ndarray, image: Image) -> np.ndarray:
        """Data coordinates of `layer` -> ``(y, x)`` coordinates (float) of the background `image`.

        They become pixels in the core (`pixel_index`, `rectangle_box`), which drops float32 noise.
        """
        world = np.asarray(layer.data_to_world(coords), dtype=float)
        point = np.asarray(self.viewer.dims.point, dtype=float)
        point[-len(world) :] = world
        return np.asarray(image.world_to_data(point), dtype=float)[-2:]

    def _on_session_plane(self, target: tuple[Image, int | None]) -> bool:
        return self._session is not None and self._session[0] is target[0] and self._session[1] == target[1]

    def _base_scene(self, target: tuple[Image, int | None]) -> Scene:
        """The placements new lesions join: the current scene on its plane, none on another background or slice."""
        return self.scene if self._on_session_plane(target) else ()

    def _start_session(self, target: tuple[Image, int | None]) -> None:
        """Placements belong to one plane: another background or slice starts afresh (new result layers).

        Called only once a placement on `target` succeeded, so that a refused one keeps the earlier scene and its Undo.
        """
        if not self._on_session_plane(target):
            self.scene, self.blend, self._fused = (), Blend(), None
            self.history.clear()
            self.result_layer = self.labels_layer = None
        self._session = target

    def _shown(self, layer: Layer | None, shape: tuple[int, ...] | None) -> bool:
        """Whether `layer` is still in the viewer and, for a `shape`, holds data of that shape (else a new layer is made)."""
        return layer is not None and layer in self.viewer.layers and (shape is None or np.shape(layer.data) == shape)

    # -- the lesion model --------------------------------------------------------------------------

    def crop(self) -> tuple[MedImage, np.ndarray]:
        """The lesion crop the annotator selected, a 2D MedImage in the background's units, modality and pixel spacing, and its mask."""
        target = self._target()
        plane = self._plane(target)
        source = self.crop_layer.value
        if source is None:
            raise InputError("no lesion crop: draw a rectangle in a Shapes layer (or label the lesion) and choose it")
        if isinstance(source, Labels):
            labels = image_plane(np.asarray(source.data), target[1] if source.ndim == 3 else None)
            box = label_box(labels, self.label_id.value)
            values, mask = lesion_crop(plane, box, labels, self.label_id.value)
        else:
            vertices = _chosen_item(source, "rectangle")
            pixels = np.array([self._to_pixel(source, v, target[0]) for v in vertices])
            values, mask = lesion_crop(plane, rectangle_box(pixels, plane.shape))
        image = layer_image(target[0])
        crop = MedImage(
            values, "yx", tuple(image.spacing[-2:]), modality=image.modality, units=image.units, name=f"{image.name} lesion crop"
        )
        return crop, mask

    @_reported
    def train(self) -> None:
        """Train a SinGAN on the selected crop in a worker, with a progress bar."""
        if self.run.state is not RunState.IDLE:
            raise InputError("a SinGAN is training already; stop it first")
        settings = parse(SinGANSettings, self.training.values())
        values, mask = self.crop()
        self.run.start(lambda control: training_events(values, mask, settings, control), self._on_event)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Started):
            self._close_progress()
            self.progress = progress(total=event.total_steps, desc="Training SinGAN")
            self.model_status.value = f"training on {event.device}"
        elif isinstance(event, Progress):
            if self.progress is not None:
                self.progress.update(event.step - self.progress.n)
            self.model_status.value = (
                f"step {event.step}/{event.total_steps} ({event.phase}), rec {event.losses.get('rec', 0):.3g}"
            )
        elif isinstance(event, Samples):
            self.model_status.value = f"scale done at step {event.step}"
        elif isinstance(event, Finished):
            self.model_status.value = f"training {event.reason} at step {event.step}"
        elif isinstance(event, Trained):
            self._set_generator(event.generator, f"trained SinGAN ({event.generator.scales} scales)")
        elif isinstance(event, Failed):
            self.model_status.value = f"training failed: {type(event.error).__name__}"
            report_error(event.error)

    def _set_generator(self, generator: LesionGenerator, text: str) -> None:
        self.generator = generator
        self.model_status.value = text

    @_reported
    def load_model(self, path: str | Path) -> LesionGenerator:
        generator = load_singan(path)
        self._set_generator(generator, f"loaded {Path(path).name} ({generator.scales} scales)")
        return generator

    @_reported
    def save_model(self, path: str | Path) -> Path:
        saved = save_singan(self._require_generator(), path)
        self.generator = replace(self.generator, path=saved)
        self.model_status.value = f"saved {saved.name}"
        return saved

    def _require_generator(self) -> LesionGenerator:
        if self.generator is None:
            raise InputError("no lesion model: train a SinGAN on a crop, or load a saved one")
        return self.generator

    def _show_state(self, state: RunState) -> None:
        self.train_button.enabled = state is RunState.IDLE
        self.stop_button.enabled = state in (RunState.RUNNING, RunState.PAUSED)
        if state is RunState.IDLE:
            self._close_progress()

    def _close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    # -- the danger zone ---------------------------------------------------------------------------

    @_reported
    def new_danger(self) -> Labels:
        """An all-permissible danger zone to paint the forbidden parts into (paint label 0)."""
        layer, _ = self._target()
        return self._show_danger(np.ones(layer.data.shape, dtype=np.uint8))

    @_reported
    def bootstrap_danger(self) -> Labels:
        """The danger zone from the modality's intensity and morphology rules (to correct by hand)."""
        layer, _ = self._target()
        return self._show_danger(bootstrap_danger(layer_image(layer)))

    @_reported
    def load_danger(self, path: str | Path) -> Labels:
        """A danger zone from a mask file (1 permissible, 0 forbidden) on the background's grid, or predicted by a danger-unet checkpoint."""
        layer, _ = self._target()
        return self._show_danger(danger_for(load_danger_source(path), layer_image(layer)))

    def _show_danger(self, mask: np.ndarray) -> Labels:
        layer, _ = self._target()
        if self._shown(self.danger_layer, mask.shape):
            self.danger_layer.data = mask
        else:
            self.danger_layer = self.viewer.add_labels(
                mask,
                name=DANGER_NAME,
                opacity=DANGER_OPACITY,
                colormap=DirectLabelColormap(color_dict=DANGER_COLORS),
                **_geometry(layer, mask.ndim),
            )
        # Painting with label 0 marks forbidden pixels, label 1 permissible ones.
        self.danger_layer.selected_label = 0
        return self.danger_layer

    def _permissible(self, target: tuple[Image, int | None]) -> np.ndarray:
        """``(H, W)`` boolean: permissible pixels of the danger zone in the plane."""
        layer = self.danger_layer
        if layer is None or layer not in self.viewer.layers:
            raise InputError("no danger zone: create one (New, From modality rules or Load) before placing lesions")
        danger = np.asarray(layer.data)
        if danger.shape != target[0].data.shape:
            raise InputError(
                f"the danger zone has shape {danger.shape} but {target[0].name!r} has {target[0].data.shape}; make a new one for this image"
            )
        return image_plane(danger, target[1]) == 1

    # -- the location prior ------------------------------------------------------------------------

    @_reported
    def show_prior(self) -> LocationModel:
        """Fit the prior to the chosen label layers and files; show its heatmap and top-k candidates."""
        maps = [np.asarray(layer.data) for layer in self.prior_layers.value]
        maps += [np.asarray(medsynth.io.read_image(path, as_label=True).array) for path in self.prior_files.value]
        if not maps:
            raise InputError("no historical lesions: choose label layers or label files for the location prior")
        return self._show_location(fit_location_prior(maps))

    @_reported
    def load_prior(self, path: str | Path) -> LocationModel:
        """A saved location prior (JSON) or a lesion-heatmap checkpoint (its heatmap of the plane); shown like a fitted prior."""
        return self._show_location(load_location_model(path))

    def _candidates(self, model: LocationModel, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The heatmap of `model` on `plane` and its top-k candidates with their densities."""
        options = parse(PriorOptions, self.prior_options.values())
        heat = model.plane_heatmap(plane)
        return (heat, *top_candidates(heat, options.top_k, options.min_distance))

    def _show_location(self, model: LocationModel) -> LocationModel:
        target = self._target()
        heat, candidates, _ = self._candidates(model, self._plane(target))
        geometry = _geometry(target[0], 2)
        if self._shown(self.heatmap_layer, heat.shape):
            self.heatmap_layer.data = heat
            self.heatmap_layer.contrast_limits = (0.0, float(heat.max()))
        else:
            self.heatmap_layer = self.viewer.add_image(
                heat, name="location prior", colormap="inferno", blending="additive", opacity=HEATMAP_OPACITY, **geometry
            )
        if self._shown(self.candidates_layer, None):
            self.candidates_layer.data = candidates
        else:
            self.candidates_layer = self.viewer.add_points(
                candidates, name="lesion candidates", symbol="cross", face_color="cyan", size=4, **geometry
            )
        self.prior = model
        self.status.value = f"{model.describe()}; {len(candidates)} candidates"
        return model

    # -- placing -----------------------------------------------------------------------------------

    def _draw(self, label_id: int, size: float, options: PlacementOptions) -> tuple[Lesion, int]:
        return draw_lesion(self._require_generator(), lesion_seed(options.seed, label_id), size, options.variability)

    def _check_model(self, target: tuple[Image, int | None]) -> LesionGenerator:
        """The lesion model, refused when it was trained on another modality or units than the background."""
        generator = self._require_generator()
        check_compatible(generator, layer_image(target[0]))
        return generator

    @_reported
    def place_by_hand(self) -> Scene:
        """Place one lesion at the selected (else last) point or box of the hand layer; refused in the danger zone."""
        layer = self.hand_layer.value
        if layer is None:
            raise InputError("no placement layer: add a Points layer (click a point) or a Shapes layer (drag a box) and choose it")
        return self._place_at(layer, _chosen_item(layer, "point" if isinstance(layer, Points) else "rectangle"))

    def _on_hand_points(self, event: Any) -> None:
        """A point clicked into the hand Points layer places a lesion there at once; a refused point is removed again."""
        if getattr(event, "action", None) != ActionType.ADDED:
            return
        refused = []
        for index in event.data_indices:
            try:
                self._place_at(event.source, np.asarray(event.source.data[index], dtype=float))
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

    def _place_at(self, layer: Layer, item: np.ndarray) -> Scene:
        """Place one lesion at a point ``(D,)`` of a Points layer, or fitted into a box ``(N, D)`` of a Shapes layer."""
        target = self._target()
        generator = self._check_model(target)
        options = parse(PlacementOptions, self.options.values())
        if item.ndim == 1:
            centre, size = tuple(self._to_pixel(layer, item, target[0])), options.size
        else:
            box = rectangle_box(np.array([self._to_pixel(layer, v, target[0]) for v in item]), self._plane(target).shape)
            centre = box_centre(box)
            height, width = generator.model.shapes[-1]
            size = float(np.clip(min((box[2] - box[0]) / height, (box[3] - box[1]) / width), 0.1, 8.0))
        base = self._base_scene(target)
        permissible = self._permissible(target)
        label_id = _next_id(base)
        lesion, seed = self._draw(label_id, size, options)
        position = place_by_hand(permissible, lesion.mask, centre, _taken(base, permissible.shape))
        return self._commit((*base, Placement(lesion, position, label_id, seed)), _blend(options), target)

    @_reported
    def sample(self) -> Scene:
        """Sample k lesions into ``C_final`` (the prior's candidates, else every permissible place)."""
        target = self._target()
        self._check_model(target)
        options = parse(PlacementOptions, self.options.values())
        base = self._base_scene(target)
        permissible = self._permissible(target)
        free = permissible & ~_taken(base, permissible.shape)
        first = _next_id(base)
        drawn = [self._draw(first + i, options.size, options) for i in range(options.count)]
        candidates = weights = None
        if self.prior is not None:
            _, candidates, weights = self._candidates(self.prior, self._plane(target))
        rng = np.random.default_rng([options.seed, first])
        centres = sample_placements(
            free,
            [lesion.mask for lesion, _ in drawn],
            rng,
            candidates=candidates,
            weights=weights,
            min_spacing=options.min_spacing,
            existing=[p.centre for p in base],
        )
        added = [Placement(lesion, centre, first + i, seed) for i, ((lesion, seed), centre) in enumerate(zip(drawn, centres, strict=True))]
        return self._commit((*base, *added), _blend(options), target)

    @_reported
    def refuse(self) -> Scene:
        """Fuse again after the annotator moved or deleted lesion labels; a lesion moved onto forbidden pixels is refused."""
        if self._session is None or self.labels_layer is None or self.labels_layer not in self.viewer.layers:
            raise InputError("nothing to re-fuse: place lesions first (the lesion labels layer is missing)")
        labels = image_plane(np.asarray(self.labels_layer.data), self._session[1])
        scene = edited_scene(self.scene, labels)
        check_scene(scene, self._permissible(self._session))
        return self._commit(scene, _blend(parse(PlacementOptions, self.options.values())), self._session)

    @_reported
    def undo(self) -> Scene:
        """Go back to the previous placements and their fusion, with the blend they were fused with."""
        if not self.history:
            raise InputError("nothing to undo")
        scene, blend = self.history[-1]
        fused = self._fusion(scene, blend, self._session)
        self.history.pop()
        self.scene, self.blend = scene, blend
        self._show(fused)
        return self.scene

    def _commit(self, scene: Scene, blend: Blend, target: tuple[Image, int | None]) -> Scene:
        """Make `scene` fused with `blend` on `target`'s plane the current state; nothing changes if the fusion fails."""
        fused = self._fusion(scene, blend, target)
        self._start_session(target)
        self.history.append((self.scene, self.blend))
        self.scene, self.blend = scene, blend
        self._show(fused)
        return scene

    # -- fusion results ----------------------------------------------------------------------------

    def _fusion(self, scene: Scene, blend: Blend, target: tuple[Image, int | None]) -> tuple[MedImage, MedImage]:
        """The synthetic image and lesion label map of `scene` fused into `target`'s plane, on the background's grid.

        The provenance lists each lesion's seed (``label:seed``), with which `draw_lesion` draws it again.
        """
        layer, index = target
        source = layer_image(layer)
        result = fuse(
            self._plane(target),
            [p.lesion for p in scene],
            [p.centre for p in scene],
            ids=[p.label_id for p in scene],
            blend=blend.name,
            feather_px=blend.feather_px,
        )
        image, labels = assemble(np.asarray(layer.data), result.image, result.labels, index)
        checkpoint = self.generator.path.name if self.generator and self.generator.path else ""
        seeds = " ".join(f"{p.label_id}:{p.seed}" for p in scene)
        provenance = SyntheticProvenance(
            model=RECIPE,
            model_version=medsynth.__version__,
            checkpoint=checkpoint,
            description=f"{len(scene)} SinGAN lesions fused ({blend.name}) into {source.name}; lesion seeds {seeds}",
        )
        name = f"{source.name} lesions"
        return (
            source.with_array(image, synthetic=provenance, name=name),
            source.with_array(labels, synthetic=provenance, name=f"{name} labels", is_label=True, units=""),
        )

    def _show(self, fused: tuple[MedImage, MedImage]) -> None:
        image, labels = fused
        self.result_layer = self._update_layer(self.result_layer, image)
        self.labels_layer = self._update_layer(self.labels_layer, labels)
        self._fused = fused
        ids = [p.label_id for p in self.scene]
        self.status.value = f"{len(ids)} lesions (ids {', '.join(map(str, ids)) or 'none'})"

    def _update_layer(self, layer: Layer | None, image: MedImage) -> Layer:
        data, kwargs, layer_type = to_layer_data(image)
        if self._shown(layer, data.shape):
            layer.data = data
            layer.metadata = kwargs["metadata"]
            return layer
        add = self.viewer.add_labels if layer_type == "labels" else self.viewer.add_image
        return add(data, **kwargs)

    # -- export ------------------------------------------------------------------------------------

    @_reported
    def export(self, folder: str | Path) -> list[Path]:
        """Write the fused image and lesion labels: NIfTI, DICOM, DICOM-SEG and a JSON manifest, all marked synthetic."""
        if self._fused is None or not self.scene:
            raise InputError("nothing to export: place lesions first")
        image, labels = self._fused
        if self.labels_layer is not None and not np.array_equal(np.asarray(self.labels_layer.data), labels.array):
            raise InputError("the lesion labels were edited since the last fusion; press Re-fuse (or Undo) before exporting")
        folder = Path(folder)
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", image.name).strip("_") or "lesions"
        targets = {
            "image": folder / f"{stem}.nii.gz",
            "labels": folder / f"{stem}_labels.nii.gz",
            "seg": folder / f"{stem}_seg.dcm",
            "manifest": folder / f"{stem}.json",
            "dicom": folder / f"{stem}_dicom",
        }
        clashes = [str(path) for path in targets.values() if path.exists()]
        if clashes:
            raise InputError(f"{', '.join(clashes)} exist already; choose an empty folder (files are never overwritten)")
        from medsynth.io import write_dicom, write_dicom_seg, write_nifti

        written = [write_nifti(image, targets["image"]), write_nifti(labels, targets["labels"])]
        dicom = write_dicom(image, targets["dicom"])
        names = {p.label_id: f"Synthetic lesion {p.label_id}" for p in self.scene}
        written += [*dicom, write_dicom_seg(labels, dicom, targets["seg"], provenance=labels.synthetic, segment_names=names)]
        written.append(write_text(targets["manifest"], json.dumps(self._manifest(image, labels), indent=2)))
        self.status.value = f"exported {len(written)} files to {folder}"
        return written

    def _manifest(self, image: MedImage, labels: MedImage) -> dict[str, Any]:
        """Per lesion: the tight box and centroid of its label pixels in the plane (as `medsynth lesions` lists them),
        the generated patch's centre and shape, and its seed; plus the blend the image was fused with."""
        plane = image_plane(np.asarray(labels.array), self._session[1])
        return {
            "synthetic": image.synthetic.summary(),
            "background": self._session[0].name,
            "slice": self._session[1],
            "lesion_model": str(self.generator.path) if self.generator and self.generator.path else "",
            "options": {**self.options.values(), "blend": self.blend.name, "feather_px": self.blend.feather_px},
            "lesions": [
                {
                    "label_id": p.label_id,
                    **label_geometry(plane, p.label_id),
                    "centre_y": p.centre[0],
                    "centre_x": p.centre[1],
                    "patch_height": p.lesion.mask.shape[0],
                    "patch_width": p.lesion.mask.shape[1],
                    "lesion_seed": p.seed,
                }
                for p in self.scene
            ],
        }

    # -- dialogs and closing -----------------------------------------------------------------------

    def _ask_path(self, title: str, filter_: str, action, *, save: bool = False) -> None:
        ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = ask(self, title, str(Path.home()), filter_)
        if path:
            action(path)

    def _ask_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export lesions to folder", str(Path.home()))
        if folder:
            self.export(folder)

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop training and wait for it (closing the widget or the viewer)."""
        if self.run.worker is not None and not self.run.shutdown(SHUTDOWN_TIMEOUT_S):
            report_error(RuntimeError(f"SinGAN training did not stop within {SHUTDOWN_TIMEOUT_S:.0f} s"))
        self._close_progress()


def _taken(scene: Scene, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` pixels covered by the lesions of `scene`."""
    taken = np.zeros(shape, dtype=bool)
    for placement in scene:
        taken |= placed_mask(placement, shape)
    return taken


def _next_id(scene: Scene) -> int:
    return max((p.label_id for p in scene), default=0) + 1


def _blend(options: PlacementOptions) -> Blend:
    return Blend(options.blend, options.feather_px)


def _chosen_item(layer: Layer, kind: str) -> np.ndarray:
    """The selected (else the last) point ``(D,)`` or shape's vertices ``(N, D)`` of a Points or Shapes layer."""
    if len(layer.data) == 0:
        raise InputError(f"{layer.name!r} is empty; add a {kind} to it first")
    selected = sorted(layer.selected_data)
    return np.asarray(layer.data[selected[-1] if selected else -1], dtype=float)


def _geometry(layer: Image, ndim: int) -> dict[str, Any]:
    """scale, translate and affine of `layer`'s last `ndim` axes, for layers drawn over it."""
    affine = np.asarray(layer.affine.affine_matrix)[-ndim - 1 :, -ndim - 1 :]
    return {"scale": tuple(layer.scale[-ndim:]), "translate": tuple(layer.translate[-ndim:]), "affine": affine}


def _section(title: str, *widgets: Any) -> Container:
    return Container(widgets=[Label(value=f"<b>{title}</b>"), *widgets])


def _row(*buttons: PushButton) -> Container:
    return Container(widgets=list(buttons), layout="horizontal", labels=False)
