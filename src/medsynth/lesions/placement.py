"""Where a lesion may go: footprints against the danger-zone mask, by hand or sampled from candidates.

A lesion is placed by its centre ``(y, x)``: its ``(h, w)`` footprint covers rows ``y - h // 2`` to
``y - h // 2 + h`` and the matching columns. A placement is permissible only when EVERY footprint pixel
lies inside the image on a permissible pixel of ``M_danger`` (1 permissible, 0 forbidden); the centres
that satisfy this are the erosion of the permissible mask by the footprint (outside the image counts
as forbidden). ``C_final`` is the location candidates ``C_loc`` that pass this test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medsynth.errors import InputError
from medsynth.data.geometry import pixel_index

Point = tuple[int, int]


def footprint_slices(centre: Point, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Row and column slices of a footprint of `shape` centred at `centre` (may reach outside the image)."""
    y0, x0 = int(centre[0]) - shape[0] // 2, int(centre[1]) - shape[1] // 2
    return slice(y0, y0 + shape[0]), slice(x0, x0 + shape[1])


def inside_image(centre: Point, shape: tuple[int, int], image_shape: tuple[int, int]) -> bool:
    rows, cols = footprint_slices(centre, shape)
    return rows.start >= 0 and cols.start >= 0 and rows.stop <= image_shape[0] and cols.stop <= image_shape[1]


def forbidden_overlap(permissible: np.ndarray, footprint: np.ndarray, centre: Point) -> int:
    """Number of footprint pixels on forbidden pixels of ``(H, W)`` `permissible` (the footprint must be inside)."""
    rows, cols = footprint_slices(centre, footprint.shape)
    return int(np.count_nonzero(footprint & ~permissible[rows, cols].astype(bool)))


def allowed_centres(permissible: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``(H, W)`` boolean map of the centres where the whole ``(h, w)`` `footprint` lies on permissible pixels."""
    footprint = np.asarray(footprint, dtype=bool)
    if not footprint.any():
        raise InputError("the lesion's footprint mask is empty; give a lesion with at least one pixel")
    # binary_erosion centres the structure at shape // 2 and reads structure[k] at p + k - shape // 2,
    # which is exactly `footprint_slices`; border_value=0 forbids footprint pixels outside the image.
    allowed = ndimage.binary_erosion(np.asarray(permissible, dtype=bool), structure=footprint, border_value=0)
    # The erosion ignores the patch's empty rim, yet the patch is pasted whole: it must fit in the image too.
    (h, w), (height, width) = footprint.shape, allowed.shape
    fits = np.zeros_like(allowed)
    fits[h // 2 : height - h + h // 2 + 1, w // 2 : width - w + w // 2 + 1] = True
    return allowed & fits


def place_by_hand(
    permissible: np.ndarray, footprint: np.ndarray, centre: tuple[float, float], taken: np.ndarray | None = None
) -> Point:
    """Check a hand placement at the pixel holding `centre` (`pixel_index`); return that pixel, or raise InputError saying why it is refused.

    `taken` ``(H, W)`` marks the pixels of lesions placed before; covering one is refused with its
    own message, before the danger zone is checked.
    """
    y, x = pixel_index(centre[:2])
    footprint = np.asarray(footprint, dtype=bool)
    if not inside_image((y, x), footprint.shape, permissible.shape):
        raise InputError(
            f"lesion at ({y}, {x}) of size {footprint.shape[0]}x{footprint.shape[1]} reaches outside the "
            f"{permissible.shape[0]}x{permissible.shape[1]} image; choose a place further inside"
        )
    if taken is not None:
        covered = forbidden_overlap(~np.asarray(taken, dtype=bool), footprint, (y, x))
        if covered:
            raise InputError(
                f"lesion at ({y}, {x}) overlaps a lesion placed before by {covered} pixels; choose a free place "
                "(or erase that lesion's label and Re-fuse first)"
            )
    overlap = forbidden_overlap(permissible, footprint, (y, x))
    if overlap:
        raise InputError(f"lesion at ({y}, {x}) overlaps the danger zone by {overlap} pixels; choose another place")
    return y, x


def box_centre(box: tuple[float, float, float, float]) -> Point:
    """Centre ``(y, x)`` of a ``(y0, x0, y1, x1)`` box the annotator dragged."""
    y0, x0, y1, x1 = box
    return int((y0 + y1) // 2), int((x0 + x1) // 2)


def final_candidates(candidates: np.ndarray, permissible: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``C_final``: the rows of ``(K, 2)`` integer `candidates` where the whole footprint is permissible."""
    candidates = np.asarray(candidates, dtype=int).reshape(-1, 2)
    return candidates[_permitted(candidates, allowed_centres(permissible, footprint))]


def sample_placements(
    permissible: np.ndarray,
    footprints: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    candidates: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    min_spacing: float = 0.0,
    existing: Sequence[tuple[float, float]] | np.ndarray = (),
) -> list[Point]:
    """Centres for each footprint in turn, drawn from ``C_final``, never overlapping one another.

    `candidates` ``(K, 2)`` are ``C_loc`` (e.g. the location prior's top-k) with optional `weights`
    ``(K,)``; without them every permissible centre is a candidate with equal weight. Each lesion's
    footprint is removed from the permissible mask for the next ones, and every centre keeps at least
    `min_spacing` pixels from the others and from the `existing` centres ``(y, x)`` of lesions placed
    earlier, whose footprints the caller removes from `permissible` (for lesions known only as a
    label map: ``permissible & (labels == 0)`` and `medsynth.data.geometry.lesion_centroids`).

    The draw is greedy and never returns fewer centres than footprints: when a lesion finds no place,
    InputError says how many were placed and what to change.
    """
    free = np.asarray(permissible, dtype=bool).copy()
    earlier = np.asarray(existing, dtype=float).reshape(-1, 2)
    placed: list[Point] = []
    for index, footprint in enumerate(footprints):
        footprint = np.asarray(footprint, dtype=bool)
        allowed = allowed_centres(free, footprint)
        options, chances = _options(allowed, candidates, weights)
        others = np.concatenate([earlier, np.asarray(placed, dtype=float).reshape(-1, 2)])
        if len(others) and min_spacing > 0:
            far = np.min(np.linalg.norm(options[:, None, :] - others[None], axis=-1), axis=1) >= min_spacing
            options, chances = options[far], chances[far]
        if len(options) == 0:
            raise InputError(
                _no_place_message(index, footprints, footprint, min_spacing, len(earlier), candidates is not None)
            )
        pick = options[rng.choice(len(options), p=chances / chances.sum())]
        centre = (int(pick[0]), int(pick[1]))
        rows, cols = footprint_slices(centre, footprint.shape)
        free[rows, cols] &= ~footprint
        placed.append(centre)
    return placed


def _no_place_message(
    index: int, footprints: Sequence[np.ndarray], footprint: np.ndarray, min_spacing: float, existing: int, prior: bool
) -> str:
    where = " among the location candidates" if prior else ""
    others = [f"the {index} lesion(s) sampled before it"] if index else []
    others += [f"the {existing} lesion(s) placed earlier"] if existing else []
    spacing = f" at least {min_spacing:g} px from {' and '.join(others)}" if min_spacing > 0 and others else ""
    return (
        f"no permissible place is left for lesion {index + 1} of {len(footprints)} "
        f"(size {footprint.shape[0]}x{footprint.shape[1]}){where}{spacing}; place fewer or smaller lesions, lower "
        f"the minimum spacing{', ask for more candidates' if prior else ''}, or widen the permissible zone"
    )


def _options(
    allowed: np.ndarray, candidates: np.ndarray | None, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Allowed centres ``(M, 2)`` and their positive weights ``(M,)``."""
    if candidates is None:
        options = np.argwhere(allowed)
        return options, np.ones(len(options))
    candidates = np.asarray(candidates, dtype=int).reshape(-1, 2)
    chances = np.ones(len(candidates)) if weights is None else np.asarray(weights, dtype=float).reshape(-1)
    if chances.shape[0] != candidates.shape[0]:
        raise InputError(f"got {candidates.shape[0]} candidates but {chances.shape[0]} weights; give one weight each")
    keep = _permitted(candidates, allowed) & (chances > 0)
    return candidates[keep], chances[keep]


def _permitted(candidates: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``(K,)`` True where a ``(K, 2)`` candidate lies in the image on an allowed centre."""
    inside = (candidates >= 0).all(axis=1) & (candidates < allowed.shape).all(axis=1)
    keep = np.zeros(len(candidates), dtype=bool)
    keep[inside] = allowed[candidates[inside, 0], candidates[inside, 1]]
    return keep
