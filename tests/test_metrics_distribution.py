"""FID and KID (through torchmetrics) against direct formulas, and LPIPS against a written-out computation.

A small random convolutional network stands in for Inception: the formulas do not depend on which
network made the features, and the real weights cannot be downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from pydicom.data import get_testdata_file
from scipy import linalg, ndimage
from torch import nn

from medsynth.errors import CheckpointError, InputError, MissingWeightsError
from medsynth.metrics.distribution import fid, frechet_distance, kid

MR_RANGE = (0.0, 600.0)


def _extractor(seed: int = 0) -> nn.Module:
    """(B, 3, H, W) -> (B, 12) features from a fixed random network."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    return net.requires_grad_(False)


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    return pydicom.dcmread(get_testdata_file("MR2_UNCR.dcm")).pixel_array.astype(np.float64)


@pytest.fixture(scope="module")
def sets(mr) -> tuple[np.ndarray, np.ndarray]:
    """24 real 64x64 MR crops and 24 'synthetic' ones: other crops, blurred and noisy."""
    rng = np.random.default_rng(0)
    corners = rng.integers(200, 760, size=(48, 2))
    crops = np.stack([mr[y : y + 128 : 2, x : x + 128 : 2] for y, x in corners])
    fake = ndimage.gaussian_filter(crops[24:], (0, 1.5, 1.5)) + rng.normal(0, 25, crops[24:].shape)
    return crops[:24], fake


def _features(images: np.ndarray, lo: float, hi: float, net: nn.Module) -> np.ndarray:
    """The FID protocol written out: [0, 1] scaling with clipping, gray to RGB, bilinear 299 x 299."""
    x = torch.from_numpy(np.clip((images - lo) / (hi - lo), 0, 1)).float()[:, None].repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        return net(x).double().numpy()


def _direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def _direct_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 of Binkowski et al."""
    d, m = a.shape[1], a.shape[0]
    k = lambda x, y: (x @ y.T / d + 1) ** 3
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float(
        (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
        + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
        - 2 * kab.mean()
    )


def test_fid_matches_direct_formula_on_the_same_features(sets):
    real, fake = sets
    net = _extractor()
    got = fid(real, fake, data_range=MR_RANGE, extractor=net, batch_size=10)
    want = _direct_fid(_features(real, *MR_RANGE, net), _features(fake, *MR_RANGE, net))
    assert want > 0
    assert got == pytest.approx(want, rel=1e-4)
    same = fid(real, real, data_range=MR_RANGE, extractor=net)
    assert abs(same) < 1e-3 * want


def test_fid_with_more_features_than_images_matches_direct_formula(sets):
    """48 features from 24 images per set: singular covariances, where the square root needs care."""
    real, fake = sets
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 48, 9, stride=8), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.requires_grad_(False)
    got = fid(real, fake, data_range=MR_RANGE, extractor=net)
    want = _direct_fid(_features(real, *MR_RANGE, net), _features(fake, *MR_RANGE, net))
    assert want > 0
    # A square root of a singular matrix is ill-conditioned: scipy's sqrtm (the direct formula) and
    # torchmetrics' eigvals agree with each other and with us to about 2e-5 here.
    assert got == pytest.approx(want, rel=1e-4)


def test_frechet_distance_matches_scipy_sqrtm_and_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 64)), rng.normal(size=(200, 64)) @ rng.normal(size=(64, 64)) / 8 + 0.3
    stats = [torch.from_numpy(v) for v in (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))]
    want = _direct_fid(a, b)
    assert float(frechet_distance(*stats)) == pytest.approx(want, rel=1e-9)
    assert float(frechet_distance(*stats)) == pytest.approx(float(_compute_fid(*stats)), rel=1e-9)
    assert float(frechet_distance(stats[0], stats[1], stats[0], stats[1])) == pytest.approx(0.0, abs=1e-9)


def test_fid_accepts_tensors_and_volumes_as_slices(sets):
    real, fake = sets
    net = _extractor(1)
    flat = fid(real, fake, data_range=MR_RANGE, extractor=net)
    volumes = fid(torch.from_numpy(real).reshape(4, 6, 64, 64), fake.reshape(3, 8, 64, 64), data_range=MR_RANGE,
                  extractor=net)  # fmt: skip
    assert volumes == pytest.approx(flat, rel=1e-6)
    # Unequal set sizes are fine for a distribution metric.
    assert np.isfinite(fid(real[:20], fake, data_range=MR_RANGE, extractor=net))


def test_kid_matches_direct_unbiased_mmd(sets):
    real, fake = sets
    net = _extractor(2)
    mean, std = kid(real, fake, data_range=MR_RANGE, extractor=net, subset_size=24, subsets=3)
    want = _direct_kid(_features(real, *MR_RANGE, net), _features(fake, *MR_RANGE, net))
    # A subset as large as the set is the whole set in another order, and the estimate ignores order.
    assert mean == pytest.approx(want, rel=1e-4)
    assert std == pytest.approx(0.0, abs=1e-6 * abs(want))


def test_kid_subsets_are_repeatable_by_seed(sets):
    real, fake = sets
    net = _extractor(3)
    first = kid(real, fake, data_range=MR_RANGE, extractor=net, subset_size=10, subsets=20, seed=7)
    again = kid(real, fake, data_range=MR_RANGE, extractor=net, subset_size=10, subsets=20, seed=7)
    other = kid(real, fake, data_range=MR_RANGE, extractor=net, subset_size=10, subsets=20, seed=8)
    assert first == again
    assert first != other and first[1] > 0
    whole = _direct_kid(_features(real, *MR_RANGE, net), _features(fake, *MR_RANGE, net))
    assert first[0] == pytest.approx(whole, abs=4 * first[1])  # subsets estimate the same quantity


def test_default_extractor_is_the_fid_inception_from_weights(sets, monkeypatch, tmp_path):
    from medsynth.models import inception

    asked = []

    def fake_loader(path=None):
        asked.append(path)
        return _extractor(4)

    monkeypatch.setattr(inception, "load_fid_inception", fake_loader)
    real, fake = sets
    got = fid(real, fake, data_range=MR_RANGE, weights=tmp_path)
    assert asked == [tmp_path]
    assert got == pytest.approx(fid(real, fake, data_range=MR_RANGE, extractor=_extractor(4)), rel=1e-9)


def test_missing_inception_weights_name_the_file(sets, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MEDSYNTH_WEIGHTS_DIR", raising=False)
    real, fake = sets
    for metric in (fid, kid):
        with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
            metric(real, fake, data_range=MR_RANGE)
    # Bad input is reported before any weights are looked for.
    with pytest.raises(InputError, match="data_range"):
        fid(real, fake, data_range=-1.0)


def test_distribution_metrics_reject_bad_input(sets):
    real, fake = sets
    net = _extractor()
    with pytest.raises(InputError, match="at least 2"):
        fid(real[:1], fake, data_range=MR_RANGE, extractor=net)
    broken = fake.copy()
    broken[3, 10, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fid(real, broken, data_range=MR_RANGE, extractor=net)
    with pytest.raises(InputError, match=r"\(B, F\) features"):
        fid(real, fake, data_range=MR_RANGE, extractor=nn.Identity())
    with pytest.raises(InputError, match="subset_size 30"):
        kid(real, fake, data_range=MR_RANGE, extractor=net, subset_size=30)


# --- LPIPS ---------------------------------------------------------------------------------------

LPIPS_CHANNELS = (64, 128, 256, 512, 512)


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory) -> Path:
    """A folder with a VGG16 features file and an LPIPS v0.1 linear-layer file (random values)."""
    from medsynth.models.vgg import VGGFeatures

    folder = tmp_path_factory.mktemp("lpips_weights")
    torch.manual_seed(5)
    torch.save(VGGFeatures(16).state_dict(), folder / "vgg16-397923af.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) / c for i, c in enumerate(LPIPS_CHANNELS)}
    torch.save(heads, folder / "vgg.pth")
    return folder


@pytest.mark.slow
def test_lpips_matches_written_out_formula(lpips_dir, mr):
    from medsynth.metrics.lpips import LAYERS, load_lpips, lpips

    model = load_lpips(lpips_dir)
    heads = torch.load(lpips_dir / "vgg.pth", weights_only=True)
    rng = np.random.default_rng(6)
    real = np.stack([mr[300:348, 300:348], mr[500:548, 420:468]])
    fake = np.stack([real[0] + rng.normal(0, 30, (48, 48)), ndimage.gaussian_filter(real[1], 2.0)])
    got = lpips(real, fake, data_range=MR_RANGE, model=model)
    assert got.shape == (2,) and got.dtype == np.float64
    to_unit = lambda x: torch.from_numpy(np.clip(x / 600.0, 0, 1)).float()[:, None]
    with torch.no_grad():
        fr, ff = model.vgg(to_unit(real), LAYERS), model.vgg(to_unit(fake), LAYERS)
    want = np.zeros(2)
    for i, name in enumerate(LAYERS):
        a, b = fr[name].double().numpy(), ff[name].double().numpy()
        a = a / (np.sqrt((a**2).sum(1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b**2).sum(1, keepdims=True)) + 1e-10)
        w = heads[f"lin{i}.model.1.weight"].double().numpy().reshape(1, -1, 1, 1)
        want += (w * (a - b) ** 2).sum(1).mean((1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert np.all(got > 0)
    np.testing.assert_allclose(lpips(real, real, data_range=MR_RANGE, model=model), 0.0, atol=1e-7)
    # Volumes are averaged over their slices.
    volume = lpips(real[None], fake[None], data_range=MR_RANGE, model=model)
    assert volume.shape == (1,) and volume[0] == pytest.approx(got.mean(), rel=1e-5)


def test_lpips_weight_errors(lpips_dir, tmp_path, monkeypatch):
    from medsynth.metrics.lpips import load_lpips

    monkeypatch.delenv("MEDSYNTH_WEIGHTS_DIR", raising=False)
    only_vgg = tmp_path / "only_vgg"
    only_vgg.mkdir()
    (only_vgg / "vgg16-397923af.pth").symlink_to(lpips_dir / "vgg16-397923af.pth")
    with pytest.raises(MissingWeightsError, match="'vgg.pth'"):
        load_lpips(only_vgg)
    torch.save({"lin0.model.0.weight": torch.zeros(1, 64, 1, 1)}, only_vgg / "vgg.pth")
    with pytest.raises(CheckpointError, match="missing keys: lin0.model.1.weight"):
        load_lpips(only_vgg)
