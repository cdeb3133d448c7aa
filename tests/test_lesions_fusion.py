"""Fusion as published: zero the background in R_lesion, add the canvas, smooth only the Sobel seam band."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from medsynth.data.samples import load_sample
from medsynth.errors import InputError
from medsynth.lesions.crop import ellipse_mask, lesion_crop
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.fusion import Lesion, fuse, lesion_canvas, seam_band, smooth_seam
from medsynth.lesions.placement import footprint_slices, sample_placements


@pytest.fixture(scope="module")
def ct_plane() -> np.ndarray:
    """The real 128x128 CT slice in HU, read-only so that any write to it fails."""
    plane = np.asarray(load_sample("ct_slice").array, dtype=np.float32)
    plane.setflags(write=False)
    return plane


@pytest.fixture(scope="module")
def lesion(ct_plane) -> Lesion:
    values, mask = lesion_crop(ct_plane, (50, 50, 71, 67))  # real tissue, odd x even footprint
    return Lesion(values + 200.0, mask)  # brighter than its surroundings, so the seam is real


def _gaussian3(image: np.ndarray) -> np.ndarray:
    """3x3 Gaussian (sigma 1) written out, with edge replication: the reference for the seam smoothing."""
    g = np.exp(-0.5 * np.arange(-1, 2) ** 2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    padded = np.pad(image, 1, mode="edge")
    out = np.zeros_like(image, dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx] * padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out


def test_published_fusion_zeroes_adds_and_smooths_only_the_seam(ct_plane, lesion):
    centres = [(40, 40), (90, 80)]
    result = fuse(ct_plane, [lesion, lesion], centres)

    region = np.zeros(ct_plane.shape, dtype=bool)
    canvas = np.zeros(ct_plane.shape)
    for centre in centres:
        rows, cols = footprint_slices(centre, lesion.mask.shape)
        region[rows, cols] |= lesion.mask
        canvas[rows, cols][lesion.mask] = lesion.values[lesion.mask]
    composite = np.where(region, 0.0, ct_plane) + canvas
    band = result.seam

    assert band.any()
    # The seam band hugs the contour: within one pixel (8-neighbourhood, the Sobel's 3x3) on either side.
    square = np.ones((3, 3), dtype=bool)
    contour_zone = ndimage.binary_dilation(region, square) & ~ndimage.binary_erosion(region, square)
    assert not (band & ~contour_zone).any()
    np.testing.assert_array_equal(result.image[~band], composite[~band].astype(np.float32))
    np.testing.assert_allclose(result.image[band], _gaussian3(composite)[band], rtol=1e-5, atol=1e-3)
    # Outside the lesions and their seam, the background is untouched; inside, the lesion in its own units.
    outside = ~region & ~band
    np.testing.assert_array_equal(result.image[outside], ct_plane[outside])
    assert np.all(result.labels[region] > 0) and np.all(result.labels[~region] == 0)
    assert set(np.unique(result.labels)) == {0, 1, 2}


def test_fusion_returns_new_arrays_and_keeps_label_ids(ct_plane, lesion):
    before = ct_plane.copy()
    result = fuse(ct_plane, [lesion], [(64, 64)], ids=[7])
    np.testing.assert_array_equal(ct_plane, before)
    assert not np.shares_memory(result.image, ct_plane)
    assert result.image.dtype == np.float32 and result.labels.dtype == np.uint16
    assert set(np.unique(result.labels)) == {0, 7}


def test_smoothing_changes_only_the_band(ct_plane):
    band = seam_band(ellipse_mask((128, 128)))
    smoothed = smooth_seam(ct_plane, band)
    changed = smoothed != ct_plane
    assert changed.any() and not (changed & ~band).any()


def test_feather_blend_keeps_background_and_lesion_core(ct_plane, lesion):
    published = fuse(ct_plane, [lesion], [(64, 64)])
    feathered = fuse(ct_plane, [lesion], [(64, 64)], blend="feather", feather_px=3)
    region = published.labels > 0
    outside = ~region & ~published.seam
    np.testing.assert_array_equal(feathered.image[outside], ct_plane[outside])
    core = ndimage.distance_transform_edt(region) >= 4
    np.testing.assert_array_equal(feathered.image[core], published.image[core])
    rim = region & ~core & ~published.seam
    assert not np.allclose(feathered.image[rim], published.image[rim])


def test_fusion_refuses_lesions_outside_the_image_and_bad_input(ct_plane, lesion):
    with pytest.raises(InputError, match="reaches outside"):
        fuse(ct_plane, [lesion], [(2, 64)])
    with pytest.raises(InputError, match="one position per lesion"):
        fuse(ct_plane, [lesion], [])
    with pytest.raises(InputError, match="unknown blend"):
        fuse(ct_plane, [lesion], [(64, 64)], blend="poisson")
    with pytest.raises(InputError, match="2D image"):
        fuse(np.zeros((2, 128, 128)), [lesion], [(64, 64)])


@pytest.fixture(scope="module")
def three_fused(ct_plane, lesion):
    """Three lesions placed on the permissible tissue of the CT slice (as benchmarks/bench_lesions.py does)."""
    permissible = bootstrap_danger(load_sample("ct_slice")).astype(bool)
    lesions = [lesion] * 3
    centres = sample_placements(permissible, [l.mask for l in lesions], np.random.default_rng(0), min_spacing=10)
    return lesions, centres


def _sobel_magnitude(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return np.hypot(ndimage.sobel(image, axis=0), ndimage.sobel(image, axis=1))


@pytest.mark.parametrize("blend", ["published", "feather"])
def test_fusion_preserves_the_background_outside_the_lesions(ct_plane, three_fused, blend):
    """The benchmark's figure in small: SSIM against the original is higher outside the lesions than over the image."""
    lesions, centres = three_fused
    result = fuse(ct_plane, lesions, centres, blend=blend)
    data_range = float(ct_plane.max() - ct_plane.min())
    global_ssim, ssim_map = structural_similarity(ct_plane, result.image, data_range=data_range, full=True)
    outside = result.labels == 0  # the seam band included
    assert global_ssim < 0.99  # the lesions did change the image
    assert ssim_map[outside].mean() >= global_ssim
    assert ssim_map[outside & ~result.seam].mean() >= ssim_map[outside].mean()
    # Beyond the seam band (1 px) and SSIM's 7x7 window (3 px) around every lesion, SSIM is 1.
    far = ~ndimage.binary_dilation(result.labels > 0, np.ones((3, 3), dtype=bool), iterations=4)
    assert np.allclose(ssim_map[far], 1.0, atol=1e-5) and not np.allclose(ssim_map[~far], 1.0, atol=1e-5)


def test_published_seam_is_smoother_than_a_raw_paste(ct_plane, three_fused):
    """The seam smoothing lowers the gradient on the seam band below a paste without blending."""
    lesions, centres = three_fused
    result = fuse(ct_plane, lesions, centres)
    canvas, labels = lesion_canvas(ct_plane.shape, lesions, centres)
    raw = np.where(labels > 0, 0.0, ct_plane) + canvas
    np.testing.assert_array_equal(result.image[~result.seam], raw[~result.seam].astype(np.float32))
    published = _sobel_magnitude(result.image)[result.seam].mean()
    pasted = _sobel_magnitude(raw)[result.seam].mean()
    assert published < 0.9 * pasted
    feathered = fuse(ct_plane, lesions, centres, blend="feather")
    assert _sobel_magnitude(feathered.image)[feathered.seam].mean() < pasted
