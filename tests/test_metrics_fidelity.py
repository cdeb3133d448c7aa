"""PSNR, SSIM (masked too) and MS-SSIM against scikit-image, torchmetrics and direct formulas, on real images."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from medsynth.errors import InputError
from medsynth.metrics.fidelity import MS_SSIM_BETAS, ms_ssim, psnr, ssim

MR_RANGE = 600.0  # MR2_UNCR spans 0..595


def _sk_ssim(a, b, data_range, full=False):
    return sk_ssim(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, full=full
    )


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    """A 256x256 MR image (central part of MR2_UNCR at half resolution), float64."""
    full = pydicom.dcmread(get_testdata_file("MR2_UNCR.dcm")).pixel_array.astype(np.float64)
    return full[256:768:2, 256:768:2]


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """CT_small (128x128) in HU."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def mr_pairs(mr) -> tuple[np.ndarray, np.ndarray]:
    """Three real MR crops and degraded versions: Gaussian noise, blur, noise + blur."""
    rng = np.random.default_rng(0)
    real = np.stack([mr[:128, :128], mr[64:192, 96:224], mr[128:, 128:]])
    fake = np.stack(
        [
            real[0] + rng.normal(0, 15, real[0].shape),
            ndimage.gaussian_filter(real[1], 1.2),
            ndimage.gaussian_filter(real[2], 0.8) + rng.normal(0, 8, real[2].shape),
        ]
    )
    return real, fake


def test_psnr_matches_scikit_image_per_item(mr_pairs):
    real, fake = mr_pairs
    got = psnr(real, fake, data_range=MR_RANGE)
    assert got.dtype == np.float64 and got.shape == (3,)
    want = [sk_psnr(r, f, data_range=MR_RANGE) for r, f in zip(real, fake)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_psnr_identical_is_inf_and_range_tuple_clips(ct):
    assert np.isinf(psnr(ct[None], ct[None], data_range=4000.0)[0])
    fake = ct + 40.0
    lo, hi = -1024.0, 3071.0
    want = sk_psnr(np.clip(ct, lo, hi), np.clip(fake, lo, hi), data_range=hi - lo)
    assert psnr(ct[None], fake[None], data_range=(lo, hi))[0] == pytest.approx(want, rel=1e-12)


def test_ssim_matches_scikit_image_2d(mr_pairs):
    real, fake = mr_pairs
    got = ssim(real, fake, data_range=MR_RANGE)
    want = [_sk_ssim(r, f, MR_RANGE) for r, f in zip(real, fake)]
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert len(set(np.round(got, 3))) == 3  # the three degradations are told apart


def test_ssim_matches_scikit_image_on_ct_in_hu(ct):
    rng = np.random.default_rng(1)
    fake = ndimage.gaussian_filter(ct, 1.0) + rng.normal(0, 10, ct.shape)
    lo, hi = -2000.0, 3000.0  # wider than the data, so clipping changes nothing
    got = ssim(torch.from_numpy(ct)[None], torch.from_numpy(fake)[None], data_range=(lo, hi))
    assert got[0] == pytest.approx(_sk_ssim(ct, fake, hi - lo), abs=1e-10)


def test_ssim_matches_scikit_image_3d(ct):
    rng = np.random.default_rng(2)
    volume = np.stack([ndimage.shift(ct, (k, -k), order=1) for k in range(16)])
    fake = ndimage.gaussian_filter(volume, 0.8) + rng.normal(0, 20, volume.shape)
    got = ssim(np.stack([volume, volume]), np.stack([fake, volume]), data_range=4000.0)
    assert got.shape == (2,)
    assert got[0] == pytest.approx(_sk_ssim(volume, fake, 4000.0), abs=1e-10)
    assert got[1] == pytest.approx(1.0, abs=1e-12)


def test_ssim_spatial_dims_two_on_a_volume_scores_each_slice(ct):
    rng = np.random.default_rng(3)
    volume = np.stack([ct, ct[::-1], ct[:, ::-1]])[None]  # (1, 3, 128, 128)
    fake = volume + rng.normal(0, 30, volume.shape)
    got = ssim(volume, fake, data_range=4000.0, spatial_dims=2)
    assert got.shape == (1, 3)
    want = [_sk_ssim(volume[0, k], fake[0, k], 4000.0) for k in range(3)]
    np.testing.assert_allclose(got[0], want, atol=1e-10)


def test_ssim_identical_and_constant_images():
    rng = np.random.default_rng(4)
    img = rng.random((2, 32, 32))
    np.testing.assert_allclose(ssim(img, img, data_range=1.0), 1.0, atol=1e-12)
    flat = np.full((1, 32, 32), 0.5)
    assert ssim(flat, flat, data_range=1.0)[0] == pytest.approx(1.0, abs=1e-12)
    other = np.full((1, 32, 32), 0.2)
    # Constant images differ only in luminance: (2ab + C1) / (a^2 + b^2 + C1).
    c1 = (0.01 * 1.0) ** 2
    want = (2 * 0.5 * 0.2 + c1) / (0.25 + 0.04 + c1)
    assert ssim(flat, other, data_range=1.0)[0] == pytest.approx(want, rel=1e-10)
    assert ssim(flat, other, data_range=1.0)[0] == pytest.approx(_sk_ssim(flat[0], other[0], 1.0), rel=1e-10)


@pytest.mark.parametrize("mode", ["inside", "outside"])
def test_masked_ssim_matches_scikit_image_full_map(mr_pairs, mode):
    real, fake = mr_pairs
    yy, xx = np.mgrid[:128, :128]
    mask = (yy - 60) ** 2 + (xx - 70) ** 2 < 30**2  # a round "lesion"
    got = ssim(real, fake, data_range=MR_RANGE, mask=mask, mask_mode=mode)
    region = (mask if mode == "inside" else ~mask)[5:-5, 5:-5]
    for value, r, f in zip(got, real, fake):
        _, full = _sk_ssim(r, f, MR_RANGE, full=True)
        assert value == pytest.approx(full[5:-5, 5:-5][region].mean(), abs=1e-10)
    unmasked = ssim(real, fake, data_range=MR_RANGE)
    assert not np.allclose(got, unmasked)


def test_masked_ssim_accepts_a_mask_per_item(mr_pairs):
    real, fake = mr_pairs
    masks = np.zeros(real.shape, dtype=np.uint8)
    masks[0, 20:60, 20:60] = 1
    masks[1, 70:120, 10:50] = 1
    masks[2, 40:90, 40:90] = 1
    got = ssim(real, fake, data_range=MR_RANGE, mask=masks)
    for k in range(3):
        assert got[k] == pytest.approx(
            ssim(real[k : k + 1], fake[k : k + 1], data_range=MR_RANGE, mask=masks[k])[0]
        )
        _, full = _sk_ssim(real[k], fake[k], MR_RANGE, full=True)
        assert got[k] == pytest.approx(full[5:-5, 5:-5][masks[k, 5:-5, 5:-5] == 1].mean(), abs=1e-10)


def test_masked_ssim_rejects_bad_masks(mr_pairs):
    real, fake = mr_pairs
    empty = np.zeros((128, 128), dtype=bool)
    empty[:3, :3] = True  # only within the border, where the window does not fit
    with pytest.raises(InputError, match="no voxel"):
        ssim(real, fake, data_range=MR_RANGE, mask=empty)
    with pytest.raises(InputError, match="binary"):
        ssim(real, fake, data_range=MR_RANGE, mask=np.full((128, 128), 0.5))
    with pytest.raises(InputError, match="shape"):
        ssim(real, fake, data_range=MR_RANGE, mask=np.ones((64, 64), dtype=bool))
    with pytest.raises(InputError, match="mask_mode"):
        ssim(real, fake, data_range=MR_RANGE, mask=~empty, mask_mode="around")


def _direct_ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float, betas) -> float:
    """MS-SSIM written out with scipy: valid region of a truncate-3.5 Gaussian, 2x2 mean downsampling."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    terms = []
    for j in range(len(betas)):
        g = lambda x: ndimage.gaussian_filter(x, 1.5, truncate=3.5)[5:-5, 5:-5]
        ma, mb = g(a), g(b)
        va, vb, cov = g(a * a) - ma**2, g(b * b) - mb**2, g(a * b) - ma * mb
        cs = (2 * cov + c2) / (va + vb + c2)
        lum = (2 * ma * mb + c1) / (ma**2 + mb**2 + c1)
        terms.append(max((lum * cs if j == len(betas) - 1 else cs).mean(), 0.0))
        h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
        a = a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
        b = b[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    return float(np.prod(np.array(terms) ** np.array(betas)))


@pytest.mark.slow
def test_ms_ssim_matches_direct_formula_and_torchmetrics(mr):
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    rng = np.random.default_rng(5)
    real = np.stack([mr, mr.T])
    fake = np.stack([mr + rng.normal(0, 20, mr.shape), ndimage.gaussian_filter(mr.T, 1.5)])
    got = ms_ssim(real, fake, data_range=MR_RANGE)
    for k in range(2):
        assert got[k] == pytest.approx(_direct_ms_ssim(real[k], fake[k], MR_RANGE, MS_SSIM_BETAS), abs=1e-10)
    # torchmetrics also averages its coarsest SSIM over the padded border, hence the looser match.
    tm = tm_ms_ssim(
        torch.from_numpy(fake[:1, None]),
        torch.from_numpy(real[:1, None]),
        data_range=MR_RANGE,
        normalize=None,
    )
    assert got[0] == pytest.approx(float(tm), abs=2e-3)
    assert ms_ssim(real, real, data_range=MR_RANGE) == pytest.approx(1.0, abs=1e-12)


def test_ms_ssim_3d_and_fewer_scales(ct):
    rng = np.random.default_rng(6)
    volume = np.stack([ndimage.shift(ct, (k / 2, 0), order=1) for k in range(48)])[:, :96, :96]
    fake = volume + rng.normal(0, 25, volume.shape)
    betas = MS_SSIM_BETAS[:3]
    got = ms_ssim(volume[None], fake[None], data_range=4000.0, betas=betas)
    assert 0.0 < got[0] < 1.0
    assert ms_ssim(volume[None], volume[None], data_range=4000.0, betas=betas)[0] == pytest.approx(1.0)
    with pytest.raises(InputError, match="at least 176"):
        ms_ssim(volume[None], fake[None], data_range=4000.0)


@pytest.mark.parametrize("metric", [psnr, ssim, ms_ssim])
def test_bad_inputs_raise_clear_errors(metric, mr):
    big = np.stack([mr])
    with pytest.raises(InputError, match="different shapes"):
        metric(big, big[:, :200], data_range=MR_RANGE)
    with_nan = big.copy()
    with_nan[0, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metric(big, with_nan, data_range=MR_RANGE)
    with pytest.raises(InputError, match="NaN"):
        metric(np.full_like(big, np.inf), big, data_range=MR_RANGE)
    for bad in (0.0, -1.0, (5.0, 5.0), (1.0, float("nan")), "auto", (0, 1, 2)):
        with pytest.raises(InputError, match="data_range"):
            metric(big, big, data_range=bad)
    with pytest.raises(TypeError):
        metric(big, big)  # data_range is never guessed


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(InputError, match="at least 11"):
        ssim(np.zeros((1, 8, 64)), np.zeros((1, 8, 64)), data_range=1.0)


def test_torch_route_used_on_gpus_matches_the_cpu_route(mr_pairs, ct, monkeypatch):
    """The tensor code path that GPUs take, run on the CPU: same figures as the numpy/scipy route."""
    from medsynth.metrics import fidelity

    real, fake = mr_pairs
    rng = np.random.default_rng(7)
    mask = rng.random(real.shape) > 0.5
    volume = np.stack([ndimage.shift(ct, (k / 2, 0), order=1) for k in range(24)])[None, :, :96, :96]
    noisy = volume + rng.normal(0, 25, volume.shape)
    cases = [
        lambda: ssim(real, fake, data_range=(0.0, 400.0)),
        lambda: ssim(real, fake, data_range=MR_RANGE, mask=mask, mask_mode="outside"),
        lambda: ssim(volume, noisy, data_range=4000.0),
        lambda: ms_ssim(real, fake, data_range=MR_RANGE, betas=MS_SSIM_BETAS[:3]),
    ]
    on_cpu = [case() for case in cases]
    monkeypatch.setattr(fidelity, "_native", lambda t: t)
    for want, case in zip(on_cpu, cases):
        np.testing.assert_allclose(case(), want, rtol=0, atol=1e-12)
    got = ssim(torch.from_numpy(real), torch.from_numpy(fake), data_range=MR_RANGE)
    np.testing.assert_allclose(got, [_sk_ssim(a, b, MR_RANGE) for a, b in zip(real, fake)], atol=1e-10)
