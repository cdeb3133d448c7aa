"""SWD (progressive-GAN definition) against direct reference computations on real MR slices."""

from __future__ import annotations

import importlib
from itertools import pairwise

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from medsynth.data.samples import sample_path
from medsynth.errors import InputError
from medsynth.metrics import swd
from medsynth.metrics.swd import (
    extract_patches,
    laplacian_pyramid,
    normalise_descriptors,
    pyramid_resolutions,
    sliced_wasserstein,
    wasserstein_1d_sorted,
)

swd_module = importlib.import_module("medsynth.metrics.swd")  # `medsynth.metrics.swd` is the function

KERNEL_5x5 = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256.0


@pytest.fixture(scope="module")
def mni_volume() -> np.ndarray:
    """The MNI152 T1 template, 2 mm in-plane and 1 mm between slices: (x, y, z) = (99, 117, 189), values 0..252."""
    return np.asarray(nib.load(sample_path("mni152")).dataobj, dtype=np.float32)[::2, ::2, :]


@pytest.fixture(scope="module")
def mni_slices(mni_volume) -> np.ndarray:
    """24 axial slices (24, 99, 117): z = 60, 62, ..., 106."""
    return np.ascontiguousarray(mni_volume[:, :, 60:108:2].transpose(2, 0, 1))


@pytest.fixture(scope="module")
def mni_other_slices(mni_volume) -> np.ndarray:
    """The 24 interleaved slices z = 61, 63, ..., 107: the same anatomy distribution, other images."""
    return np.ascontiguousarray(mni_volume[:, :, 61:109:2].transpose(2, 0, 1))


def _ref_pyr_down(x: np.ndarray) -> np.ndarray:
    return ndimage.convolve(x, KERNEL_5x5[None, None], mode="mirror")[:, :, ::2, ::2]


def _ref_pyr_up(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    up = np.zeros((*x.shape[:2], 2 * x.shape[2], 2 * x.shape[3]), np.float32)
    up[:, :, ::2, ::2] = x
    return ndimage.convolve(up, 4 * KERNEL_5x5[None, None], mode="mirror")[:, :, : shape[0], : shape[1]]


def test_pyramid_matches_full_5x5_convolution_and_reconstructs(mni_slices):
    images = mni_slices[:4, None, :64, :64]
    bands = laplacian_pyramid(images, 3)
    g1 = _ref_pyr_down(images)
    g2 = _ref_pyr_down(g1)
    np.testing.assert_allclose(bands[2], g2, atol=1e-3)  # float32 sums of values up to 252
    np.testing.assert_allclose(bands[1], g1 - _ref_pyr_up(g2, g1.shape[2:]), atol=1e-3)
    np.testing.assert_allclose(bands[0], images - _ref_pyr_up(g1, images.shape[2:]), atol=1e-3)
    # A Laplacian pyramid is invertible: expanding and adding the bands gives the images back.
    recon = bands[2]
    for band in bands[1::-1]:
        recon = _ref_pyr_up(recon, band.shape[2:]) + band
    np.testing.assert_allclose(recon, images, atol=1e-3)


def test_pyramid_handles_odd_sizes(mni_slices):
    bands = laplacian_pyramid(mni_slices[:2, None], 3)  # 99 x 117
    assert [b.shape[2:] for b in bands] == [(99, 117), (50, 59), (25, 30)]
    assert pyramid_resolutions(99, 117) == [99, 49, 24]
    assert pyramid_resolutions(256, 256) == [256, 128, 64, 32, 16]


@pytest.mark.parametrize("n, m", [(400, 400), (500, 300), (7, 13)])
def test_wasserstein_1d_matches_scipy(n, m):
    rng = np.random.default_rng(n + m)
    a, b = np.sort(rng.standard_normal(n)), np.sort(rng.gamma(2.0, size=m))
    assert wasserstein_1d_sorted(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-10)


def test_sliced_wasserstein_is_mean_of_scipy_distances_over_the_same_directions():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((300, 49)).astype(np.float32)
    b = (rng.standard_normal((200, 49)) * 1.3 + 0.2).astype(np.float32)
    got = sliced_wasserstein(a, b, np.random.default_rng(5), repeats=2, directions=16)
    dir_rng = np.random.default_rng(5)
    expected = []
    for _ in range(2):
        dirs = dir_rng.standard_normal((49, 16))
        dirs /= np.sqrt((dirs**2).sum(axis=0))
        dirs = dirs.astype(np.float32)
        expected += [stats.wasserstein_distance(a @ dirs[:, k], b @ dirs[:, k]) for k in range(16)]
    assert got == pytest.approx(np.mean(expected), rel=1e-5)


def test_grey_descriptors_are_1x7x7_neighbourhoods(mni_slices):
    level = mni_slices[:3, None]
    centres = np.array([[[3, 3], [50, 60], [95, 113]]] * 3)
    patches = extract_patches(level, centres)
    assert patches.shape == (9, 1, 7, 7)
    for i in range(3):
        for j, (r, c) in enumerate(centres[i]):
            np.testing.assert_array_equal(patches[3 * i + j, 0], level[i, 0, r - 3 : r + 4, c - 3 : c + 4])
    desc = normalise_descriptors(patches)
    assert desc.shape == (9, 49)
    assert abs(desc.mean()) < 1e-5 and desc.std() == pytest.approx(1.0, rel=1e-4)


def test_constant_descriptors_stay_finite():
    desc = normalise_descriptors(np.full((20, 1, 7, 7), 3.0, np.float32))
    np.testing.assert_array_equal(desc, 0.0)


def _reference_swd(real, fake, seed, per_image, repeats, directions):
    """The progressive-GAN algorithm written out plainly, with the same random streams as `swd`."""
    resolutions = pyramid_resolutions(*real.shape[1:])
    rngs = [np.random.default_rng([seed, k]) for k in range(3)]
    descs = []
    for images, rng in ((real, rngs[0]), (fake, rngs[1])):
        gauss = [images[:, None].astype(np.float32)]
        for _ in resolutions[1:]:
            gauss.append(_ref_pyr_down(gauss[-1]))
        bands = [g - _ref_pyr_up(c, g.shape[2:]) for g, c in pairwise(gauss)] + [gauss[-1]]
        per_level = []
        for band in bands:
            h, w = band.shape[2:]
            rows = rng.integers(3, h - 3, size=(len(images), per_image))
            cols = rng.integers(3, w - 3, size=(len(images), per_image))
            patches = np.stack(
                [band[i, :, r - 3 : r + 4, c - 3 : c + 4] for i in range(len(images)) for r, c in zip(rows[i], cols[i])]
            )
            patches = patches - patches.mean(axis=(0, 2, 3), keepdims=True)
            patches = patches / patches.std(axis=(0, 2, 3), keepdims=True)
            per_level.append(patches.reshape(len(patches), -1))
        descs.append(per_level)
    out = {}
    for res, a, b in zip(resolutions, *descs):
        dists = []
        for _ in range(repeats):
            dirs = rngs[2].standard_normal((a.shape[1], directions))
            dirs = (dirs / np.sqrt((dirs**2).sum(axis=0))).astype(np.float32)
            pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
            dists.append(np.mean(np.abs(pa - pb)))
        out[str(res)] = 1e3 * np.mean(dists)
    out["mean"] = np.mean(list(out.values()))
    return out


def test_swd_matches_plain_reference_algorithm(mni_slices, mni_other_slices):
    real, fake = mni_slices[:6, :64, :64], mni_other_slices[:6, 20:84, 30:94]
    got = swd(real, fake, seed=3, patches_per_image=16, repeats=2, directions=8)
    expected = _reference_swd(real, fake, 3, 16, 2, 8)
    assert list(got) == ["64", "32", "16", "mean"]
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-4)


@pytest.mark.slow
def test_swd_orders_same_anatomy_below_blurred_and_noisy(mni_slices, mni_other_slices):
    rng = np.random.default_rng(0)
    same = swd(mni_slices, mni_other_slices)
    identical = swd(mni_slices, mni_slices)
    blurred = swd(mni_slices, ndimage.gaussian_filter(mni_other_slices, (0, 1.5, 1.5)))
    noisy = swd(mni_slices, mni_other_slices + rng.normal(0, 5.0, mni_other_slices.shape).astype(np.float32))
    assert list(same) == ["99", "49", "24", "mean"]
    assert identical["mean"] == pytest.approx(same["mean"], rel=0.1)  # both only patch-sampling noise
    assert blurred["mean"] > 2 * same["mean"]
    assert noisy["99"] > 3 * same["99"]  # noise shows at the finest level


def test_swd_is_reproducible_and_independent_of_batching(mni_slices, mni_other_slices):
    kw = {"patches_per_image": 32, "seed": 7}
    a = swd(mni_slices, mni_other_slices, **kw)
    assert swd(mni_slices, mni_other_slices, batch_size=5, **kw) == pytest.approx(a, rel=1e-6)
    assert swd(torch.from_numpy(mni_slices), torch.from_numpy(mni_other_slices), **kw) == pytest.approx(a, rel=1e-6)
    assert swd(mni_slices, mni_other_slices, patches_per_image=32, seed=8)["mean"] != a["mean"]


def test_large_images_are_read_in_batches_of_at_most_batch_voxels(mni_slices, mni_other_slices, monkeypatch):
    kw = {"patches_per_image": 32, "seed": 7}
    whole = swd(mni_slices, mni_other_slices, **kw)
    sizes = []
    batches = swd_module._Images.batches

    def recorded(self, size):
        sizes.append(size)
        return batches(self, size)

    monkeypatch.setattr(swd_module._Images, "batches", recorded)
    monkeypatch.setattr(swd_module, "BATCH_VOXELS", 5 * 99 * 117)  # five of these 99x117 slices
    assert swd(mni_slices, mni_other_slices, **kw) == pytest.approx(whole, rel=1e-6)
    assert sizes == [5, 5]


def test_swd_ignores_global_affine_intensity_changes(mni_slices, mni_other_slices):
    """Per-set normalisation: brightness and contrast of a whole set do not count, structure does."""
    a = swd(mni_slices, mni_other_slices, patches_per_image=32)
    b = swd(mni_slices, mni_other_slices * 1000.0 - 200.0, patches_per_image=32)
    assert b == pytest.approx(a, rel=1e-3)


def test_swd_compares_sets_of_different_sizes_and_volumes_as_slices(mni_slices, mni_other_slices):
    assert np.isfinite(swd(mni_slices, mni_other_slices[:10], patches_per_image=32)["mean"])
    volumes = mni_slices.reshape(4, 6, 99, 117)
    as_slices = swd(mni_slices, mni_other_slices, patches_per_image=32)
    assert swd(volumes, mni_other_slices, patches_per_image=32) == pytest.approx(as_slices, rel=1e-6)


def test_swd_of_constant_images_is_finite_and_large(mni_slices):
    result = swd(mni_slices, np.zeros_like(mni_slices), patches_per_image=32)
    assert np.isfinite(result["mean"]) and result["mean"] > swd(mni_slices, mni_slices, patches_per_image=32)["mean"]


@pytest.mark.parametrize(
    "fake, message",
    [
        (np.full((4, 99, 117), np.nan, np.float32), "NaN"),
        (np.zeros((4, 64, 64), np.float32), "same size"),
        (np.zeros((4, 99), np.float32), "shape"),
        (np.zeros((0, 99, 117), np.float32), "shape"),
    ],
)
def test_swd_rejects_bad_input(mni_slices, fake, message):
    with pytest.raises(InputError, match=message):
        swd(mni_slices, fake)


def test_swd_rejects_images_below_16px():
    tiny = np.zeros((3, 12, 40), np.float32)
    with pytest.raises(InputError, match="at least 16x16"):
        swd(tiny, tiny)
