"""The danger-zone mask ``M_danger`` (1 permissible, 0 forbidden) bootstrapped from intensity rules.

Rules per modality, applied to the image's spatial array (a 2D image or a 3D volume) in its units:

- CT: bone is ``HU > bone_hu`` grown by `bone_margin_mm`; the body is ``HU > body_hu``, closed, its
  holes filled, largest component kept; everything outside the body (air) is forbidden.
- Radiographs (CR, DX): the body outline by Li's threshold; bone is the brightest body pixels
  (above the `bone_percentile` of the body), opened to drop speckle, then grown by `bone_margin_mm`.
- MR and everything else: the body outline by Li's (minimum cross-entropy) threshold.

These are a starting point for the annotator to correct by hand (or for the ``danger-unet``
model), not an anatomical segmentation: vessels, pleura and organs are not found by thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_li

from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.settings import setting

RADIOGRAPH_MODALITIES = ("CR", "DX", "MG", "RG", "PX")


@dataclass
class DangerRules:
    """Thresholds of the bootstrap; each has a default that suits adult CT and chest radiographs."""

    bone_hu: float = setting(300.0, "CT: values above this (HU) are bone", min=100.0, max=2000.0)
    body_hu: float = setting(-500.0, "CT: values above this (HU) are body, below it air", min=-1000.0, max=0.0)
    bone_margin_mm: float = setting(3.0, "Forbidden margin grown around bone (mm)", min=0.0, max=50.0)
    bone_percentile: float = setting(
        90.0, "Radiographs: body pixels above this percentile are bone", min=50.0, max=99.9
    )
    closing_mm: float = setting(5.0, "Closing radius that seals the body outline (mm)", min=0.0, max=50.0)


def bootstrap_danger(image: MedImage, rules: DangerRules | None = None) -> np.ndarray:
    """``M_danger`` as uint8 (1 permissible, 0 forbidden) with the image's spatial shape (``(H, W)`` or ``(Z, H, W)``)."""
    rules = rules or DangerRules()
    if image.is_rgb or image.has_time:
        raise InputError(
            f"{image.name!r} has axes {image.axes!r}; the danger-zone bootstrap takes a grey 2D image or 3D volume "
            "(convert RGB to grey, or pick one time frame)"
        )
    values = np.asarray(image.array, dtype=np.float32)
    if not np.isfinite(values).all():
        raise InputError(f"{image.name!r} holds NaN or infinite values; replace them before finding the danger zone")
    spacing = image.spacing
    modality = image.modality.upper()
    if modality == "CT":
        permissible = _ct_permissible(values, spacing, rules)
    elif modality in RADIOGRAPH_MODALITIES:
        permissible = _radiograph_permissible(values, spacing, rules)
    else:
        permissible = body_outline(values > _body_threshold(values, image.name), spacing, rules.closing_mm)
    return permissible.astype(np.uint8)


def body_outline(foreground: np.ndarray, spacing: tuple[float, ...], closing_mm: float) -> np.ndarray:
    """The body: the largest component of the closed `foreground`, holes filled (boolean, same shape)."""
    closed = foreground | _shrink(grow(foreground, spacing, closing_mm), spacing, closing_mm)
    components, count = ndimage.label(closed)
    if count == 0:
        return np.zeros(foreground.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(components == int(np.argmax(sizes)))


def grow(mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> np.ndarray:
    """`mask` dilated by a ball of `margin_mm` in world units (exact Euclidean distance, any spacing)."""
    if margin_mm <= 0 or not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm


def _shrink(mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> np.ndarray:
    """`mask` eroded by a ball of `margin_mm`; the image border does not erode (the body may be cut by it)."""
    if margin_mm <= 0 or mask.all():
        return mask
    return ndimage.distance_transform_edt(mask, sampling=spacing) > margin_mm


def _ct_permissible(values: np.ndarray, spacing: tuple[float, ...], rules: DangerRules) -> np.ndarray:
    body = body_outline(values > rules.body_hu, spacing, rules.closing_mm)
    bone = grow(values > rules.bone_hu, spacing, rules.bone_margin_mm)
    return body & ~bone


def _radiograph_permissible(values: np.ndarray, spacing: tuple[float, ...], rules: DangerRules) -> np.ndarray:
    body = body_outline(values > _body_threshold(values, "radiograph"), spacing, rules.closing_mm)
    if not body.any():
        return body
    bright = body & (values > np.percentile(values[body], rules.bone_percentile))
    # Opening by 1 mm drops bright speckle (noise, markers' edges) that is not bone.
    bone = grow(_shrink(bright, spacing, 1.0), spacing, 1.0)
    return body & ~grow(bone, spacing, rules.bone_margin_mm)


def _body_threshold(values: np.ndarray, name: str) -> float:
    if float(values.min()) == float(values.max()):
        raise InputError(f"{name!r} is constant ({float(values.min())}); there is no body to outline")
    return float(threshold_li(values))
