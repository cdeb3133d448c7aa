"""The annotator's lesion session on one background plane: placing, re-fusing after edits, Undo, export.

A `LesionSession` holds the placements (`medsynth.lesions.scene.Scene`), the blend and the lesion
model they were fused with, their fusion (`FusedScene`), and the earlier states that Undo walks back
(up to `HISTORY`). Every change commits a new state: the fusion is computed first, so a refused
placement or edit leaves the session exactly as it was. Listeners (`subscribe`) hear of each
committed change: the Lesions widget shows the fusion in its result layers that way, and tests
drive the same session without a viewer.

Lesions belong to one plane (a 2D image, or one slice of a volume); another plane is another session.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import medsynth
from medsynth.data.geometry import image_plane
from medsynth.errors import InputError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.lesions.export import export_scene
from medsynth.lesions.fusion import BLENDS, Blend, Lesion
from medsynth.lesions.location import LocationModel, PriorOptions, prior_candidates
from medsynth.lesions.manifest import lesion_records
from medsynth.lesions.placement import allowed_centres, place_by_hand, sample_placements
from medsynth.lesions.scene import (
    FusedScene,
    Placement,
    Scene,
    check_compatible,
    check_scene,
    draw_lesion,
    edited_scene,
    fuse_scene,
    lesion_seed,
    next_label_id,
    plane_of,
    taken_pixels,
)
from medsynth.lesions.singan_training import RECIPE, LesionGenerator
from medsynth.settings import setting, to_dict

HISTORY = 20
"""States kept for Undo."""


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

    def fusion(self) -> Blend:
        return Blend(self.blend, self.feather_px)


def check_fits(footprint: np.ndarray, permissible: np.ndarray, size: float, *, boxed: bool = False) -> None:
    """InputError saying what to change when a lesion's ``(h, w)`` footprint fits nowhere in `permissible`.

    The lesion was drawn at `size` times the training crop: the placement option ``size``, or the
    size of a box dragged by hand (`boxed`).
    """
    (h, w), (height, width) = footprint.shape, permissible.shape
    fix = "drag a smaller box" if boxed else f'lower the placement option "size" (now {size:g})'
    if h > height or w > width:
        largest = math.floor(100 * size * min(height / h, width / w)) / 100
        raise InputError(
            f"the lesion drawn at size {size:g} is {h}x{w} px, larger than the {height}x{width} px image plane; "
            f"{fix}{'' if boxed else f' to {largest:g} or less'}"
        )
    if not allowed_centres(permissible, footprint).any():
        raise InputError(
            f"the lesion drawn at size {size:g} ({h}x{w} px) fits nowhere in the permissible zone; {fix}, "
            "or widen the permissible zone"
        )


class SceneState(NamedTuple):
    """What Undo brings back: the placements, how they were fused, and the lesion model's path ("" if unsaved)."""

    scene: Scene
    blend: Blend
    model: str


class LesionSession:
    """Lesions placed on plane `slice_index` of `background` (None: a 2D image); see the module docstring."""

    def __init__(self, background: MedImage, slice_index: int | None = None) -> None:
        self.background = background
        self.slice_index = slice_index
        self.plane = plane_of(background.array, slice_index)
        """``(H, W)`` background pixels the lesions go into, in data units."""
        self.state = SceneState((), Blend(), "")
        self.fused: FusedScene | None = None
        self.history: deque[SceneState] = deque(maxlen=HISTORY)
        self._listeners: list[Callable[[LesionSession], None]] = []

    @property
    def scene(self) -> Scene:
        return self.state.scene

    @property
    def blend(self) -> Blend:
        return self.state.blend

    def subscribe(self, listener: Callable[[LesionSession], None]) -> None:
        """Call ``listener(session)`` after every committed change (placement, re-fusion, Undo)."""
        self._listeners.append(listener)

    # -- placing -------------------------------------------------------------------------------

    def place(
        self,
        generator: LesionGenerator,
        permissible: np.ndarray,
        centre: tuple[float, float],
        options: PlacementOptions,
        size: float | None = None,
    ) -> Scene:
        """One lesion by hand at the pixel holding `centre` (``options.size`` unless `size` is given).

        InputError, and nothing changes, when any lesion pixel would be forbidden in the ``(H, W)``
        `permissible` mask, outside the plane, or on a lesion placed before; when the lesion fits
        nowhere, the error names the size to lower (`check_fits`).
        """
        check_compatible(generator, self.background)
        boxed, size = size is not None, options.size if size is None else size
        label_id = next_label_id(self.scene)
        lesion, seed = self._draw(generator, label_id, size, options)
        check_fits(lesion.mask, permissible, size, boxed=boxed)
        position = place_by_hand(permissible, lesion.mask, centre, taken_pixels(self.scene, permissible.shape))
        placed = Placement(lesion, position, label_id, seed, size)
        return self.commit((*self.scene, placed), options.fusion(), _path(generator))

    def sample(
        self,
        generator: LesionGenerator,
        permissible: np.ndarray,
        options: PlacementOptions,
        prior: LocationModel | None = None,
        prior_options: PriorOptions | None = None,
    ) -> Scene:
        """``options.count`` lesions sampled into ``C_final``: the prior's top candidates, else every permissible place.

        Seeded by ``options.seed`` and the first new label id, so the same request on the same scene
        gives the same lesions; centres keep ``options.min_spacing`` from every lesion, earlier ones too.
        """
        check_compatible(generator, self.background)
        free = permissible & ~taken_pixels(self.scene, permissible.shape)
        first = next_label_id(self.scene)
        drawn = [self._draw(generator, first + i, options.size, options) for i in range(options.count)]
        for lesion, _ in drawn:
            check_fits(lesion.mask, permissible, options.size)
        candidates = weights = None
        if prior is not None:
            _, candidates, weights = prior_candidates(prior, self.plane, prior_options or PriorOptions())
        centres = sample_placements(
            free,
            [lesion.mask for lesion, _ in drawn],
            np.random.default_rng([options.seed, first]),
            candidates=candidates,
            weights=weights,
            min_spacing=options.min_spacing,
            existing=[p.centre for p in self.scene],
        )
        added = [
            Placement(lesion, centre, first + i, seed, options.size)
            for i, ((lesion, seed), centre) in enumerate(zip(drawn, centres, strict=True))
        ]
        return self.commit((*self.scene, *added), options.fusion(), _path(generator))

    def re_fuse(self, labels: np.ndarray, permissible: np.ndarray, blend: Blend) -> Scene:
        """Fuse again after the annotator edited the label map (``(H, W)`` plane, or the whole volume of the result).

        A deleted label's lesion goes; a moved one follows its pixels (`edited_scene`). InputError, and
        nothing changes, when a moved lesion lies on forbidden pixels or on another lesion.
        """
        if self.fused is None:
            raise InputError("nothing to re-fuse: place lesions first (the lesion labels layer is missing)")
        scene = edited_scene(self.scene, image_plane(np.asarray(labels), self.slice_index))
        check_scene(scene, permissible)
        return self.commit(scene, blend, self.state.model)

    def undo(self) -> Scene:
        """Go back to the previous placements and their fusion, with the blend they were fused with."""
        if not self.history:
            raise InputError("nothing to undo")
        previous = self.history[-1]
        fused = self._fuse(previous)
        self.history.pop()
        self._set(previous, fused)
        return self.scene

    def commit(self, scene: Scene, blend: Blend, model: str) -> Scene:
        """Make `scene` fused with `blend` the current state, the previous one going to the history.

        The fusion comes first: if it fails, nothing changes.
        """
        state = SceneState(scene, blend, model)
        fused = self._fuse(state)
        self.history.append(self.state)
        self._set(state, fused)
        return scene

    # -- export --------------------------------------------------------------------------------

    def export(
        self, folder: str | os.PathLike[str], options: PlacementOptions, shown_labels: np.ndarray | None = None
    ) -> list[Path]:
        """Write the fusion with its manifest (`medsynth.lesions.export.export_scene`).

        `shown_labels` is the label map the annotator sees; if it was edited since the last fusion,
        the export is refused (Re-fuse or Undo first), so that files and manifest say the same.
        """
        if self.fused is None or not self.scene:
            raise InputError("nothing to export: place lesions first")
        if shown_labels is not None and not np.array_equal(np.asarray(shown_labels), self.fused.labels.array):
            raise InputError("the lesion labels were edited since the last fusion; press Re-fuse (or Undo) before exporting")
        return export_scene(folder, self.fused, self.scene, self.manifest(options))

    def manifest(self, options: PlacementOptions) -> dict[str, Any]:
        """The export's JSON manifest: provenance, background, slice, lesion model, options as fused, one record per lesion."""
        labels = image_plane(np.asarray(self.fused.labels.array), self.slice_index)
        return {
            "synthetic": self.fused.image.synthetic.summary(),
            "background": self.background.name,
            "slice": self.slice_index,
            "lesion_model": self.state.model,
            "options": {**to_dict(options), "blend": self.blend.name, "feather_px": self.blend.feather_px},
            "lesions": [asdict(record) for record in lesion_records(self.scene, labels)],
        }

    # -- internals -----------------------------------------------------------------------------

    def _draw(self, generator: LesionGenerator, label_id: int, size: float, options: PlacementOptions) -> tuple[Lesion, int]:
        return draw_lesion(generator, lesion_seed(options.seed, label_id), size, options.variability)

    def _fuse(self, state: SceneState) -> FusedScene:
        """The fusion of `state`; its provenance lists each lesion's seed (``label:seed``), which draws it again."""
        seeds = " ".join(f"{p.label_id}:{p.seed}" for p in state.scene)
        fused_into = f"{len(state.scene)} SinGAN lesions fused ({state.blend.name}) into {self.background.name}"
        provenance = SyntheticProvenance(
            model=RECIPE,
            model_version=medsynth.__version__,
            checkpoint=Path(state.model).name if state.model else "",
            description=f"{fused_into}; lesion seeds {seeds}",
        )
        name = f"{self.background.name} lesions"
        return fuse_scene(self.background, self.slice_index, state.scene, state.blend, provenance, (name, f"{name} labels"))

    def _set(self, state: SceneState, fused: FusedScene) -> None:
        self.state, self.fused = state, fused
        for listener in list(self._listeners):
            listener(self)


def _path(generator: LesionGenerator) -> str:
    return str(generator.path) if generator.path else ""
