"""HyperScore, reader-study statistics, spatial frequency and SCD against direct formulas and references."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pydicom
import pytest
from scipy import ndimage, stats
from sklearn.metrics import cohen_kappa_score

from medsynth.data.samples import sample_path
from medsynth.errors import InputError
from medsynth.metrics import aggregate_v, hyperscore, inter_rater_kappa, reader_study, scd, spatial_frequency


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """The real 128x128 CT slice that pydicom ships, in HU."""
    ds = pydicom.dcmread(sample_path("ct_slice"))
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# HyperScore ---------------------------------------------------------------------------------------


def test_hyperscore_is_the_papers_formula_not_its_worked_example():
    v = 0.95
    direct = 100 * (1 + (1 / (1 + math.exp(-(5 * math.log(v) - math.log(2))))) ** 2)
    assert hyperscore(v) == pytest.approx(direct, rel=1e-12)
    assert hyperscore(v) == pytest.approx(107.78, abs=0.01)
    assert abs(hyperscore(v) - 137.2) > 25  # the paper's worked example does not follow from its formula
    assert hyperscore(1.0) == pytest.approx(100 * (1 + 1 / 9))  # the maximum with the default parameters


def test_hyperscore_parameters_and_monotonicity():
    scores = [hyperscore(v) for v in (0.2, 0.5, 0.8, 0.95, 1.0)]
    assert all(a < b for a, b in pairwise(scores)) and scores[0] > 100
    assert hyperscore(1e-6) == pytest.approx(100.0)
    assert hyperscore(0.5, beta=2.0, gamma=0.0, kappa=1.0) == pytest.approx(100 * (1 + 1 / (1 + 2**2)))


@pytest.mark.parametrize("v", [0.0, -0.3, 1.01, float("nan"), True])
def test_hyperscore_rejects_v_outside_unit_interval(v):
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        hyperscore(v)


def test_aggregate_v_normalises_weights():
    scores = {"ssim": 0.9, "fid_score": 0.5, "temporal": 0.7}
    weights = {"ssim": 2.0, "fid_score": 1.0, "temporal": 1.0}
    expected = (2 * 0.9 + 0.5 + 0.7) / 4
    assert aggregate_v(scores, weights) == pytest.approx(expected)
    assert aggregate_v(scores, {k: 10 * w for k, w in weights.items()}) == pytest.approx(expected)
    assert hyperscore(aggregate_v(scores, weights)) == pytest.approx(hyperscore(expected))


@pytest.mark.parametrize(
    "scores, weights, message",
    [
        ({"a": 0.5}, {"b": 1.0}, "one weight per score"),
        ({"a": 1.5}, {"a": 1.0}, "outside"),
        ({"a": 0.0}, {"a": 1.0}, "outside"),
        ({"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 0.0}, "positive sum"),
        ({"a": 0.5}, {"a": -1.0}, "positive sum"),
        ({}, {}, "no scores"),
    ],
)
def test_aggregate_v_rejects_bad_input(scores, weights, message):
    with pytest.raises(InputError, match=message):
        aggregate_v(scores, weights)


# Reader study -------------------------------------------------------------------------------------


def test_reader_study_reproduces_published_rater_1():
    r = reader_study(tp=85, fn=15, fp=55, tn=45)
    assert r["sensitivity"] == pytest.approx(0.85)
    assert r["specificity"] == pytest.approx(0.45)
    assert r["accuracy"] == pytest.approx(0.65)
    assert r["kappa"] == pytest.approx(0.30)
    assert r["mcnemar_p"] < 0.001


def test_reader_study_reproduces_published_rater_2():
    r = reader_study(tp=65, fn=35, fp=55, tn=45)
    assert r["kappa"] == pytest.approx(0.10)
    assert r["mcnemar_p"] == pytest.approx(0.046, abs=0.001)
    assert r["accuracy"] == pytest.approx(0.55)


def test_reader_study_against_scipy_and_sklearn():
    tp, fn, fp, tn = 65, 35, 55, 45
    r = reader_study(tp, fn, fp, tn)
    truth = ["real"] * (tp + fn) + ["synthetic"] * (fp + tn)
    answer = ["real"] * tp + ["synthetic"] * fn + ["real"] * fp + ["synthetic"] * tn
    assert r["kappa"] == pytest.approx(cohen_kappa_score(truth, answer))
    assert r["mcnemar_p"] == pytest.approx(stats.chi2.sf((abs(fn - fp) - 1) ** 2 / (fn + fp), df=1))
    assert r["mcnemar_p"] != pytest.approx(stats.chi2.sf((fn - fp) ** 2 / (fn + fp), df=1), abs=0.005)
    assert r["mcnemar_exact_p"] == pytest.approx(stats.binomtest(fn, fn + fp, 0.5).pvalue)
    assert r["binomial_p"] == pytest.approx(stats.binomtest(tp + tn, 200, 0.5).pvalue)
    assert r["n"] == 200


def test_reader_study_of_a_guessing_rater_is_not_significant():
    r = reader_study(tp=25, fn=25, fp=25, tn=25)
    assert r["accuracy"] == 0.5 and r["kappa"] == pytest.approx(0.0)
    assert r["binomial_p"] == pytest.approx(1.0) and r["mcnemar_p"] == pytest.approx(1.0)


def test_reader_study_edge_cases():
    only_real = reader_study(tp=10, fn=0, fp=0, tn=0)
    assert math.isnan(only_real["specificity"]) and only_real["sensitivity"] == 1.0
    for bad in ((-1, 0, 0, 0), (1.5, 0, 0, 0), (0, 0, 0, 0)):
        with pytest.raises(InputError):
            reader_study(*bad)


def test_inter_rater_kappa_matches_sklearn():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 80)
    a = np.where(rng.random(80) < 0.8, truth, 1 - truth)
    b = np.where(rng.random(80) < 0.7, truth, 1 - truth)
    labels = np.array(["real", "synthetic"])
    assert inter_rater_kappa(list(labels[a]), list(labels[b])) == pytest.approx(cohen_kappa_score(labels[a], labels[b]))
    assert inter_rater_kappa(list(a), list(a)) == pytest.approx(1.0)
    with pytest.raises(InputError, match="same items"):
        inter_rater_kappa(list(a), list(b[:10]))


# Spatial frequency and SCD ------------------------------------------------------------------------


def _sf_loops(img: np.ndarray) -> float:
    m, n = img.shape
    rf = sum((img[i, j] - img[i, j - 1]) ** 2 for i in range(m) for j in range(1, n)) / (m * n)
    cf = sum((img[i, j] - img[i - 1, j]) ** 2 for i in range(1, m) for j in range(n)) / (m * n)
    return math.sqrt(rf + cf)


def test_spatial_frequency_matches_the_definition(ct):
    patch = ct[40:72, 40:72]
    values = spatial_frequency(np.stack([patch, patch.T[::-1]]))
    assert values.shape == (2,)
    assert values[0] == pytest.approx(_sf_loops(patch), rel=1e-12)
    assert values[1] == pytest.approx(values[0], rel=1e-12)  # rotation swaps RF and CF


def test_spatial_frequency_measures_sharpness(ct):
    sharp, blurred, flat = ct, ndimage.gaussian_filter(ct, 2.0), np.full_like(ct, 40.0)
    values = spatial_frequency(np.stack([sharp, blurred, flat]))
    assert values[0] > 1.5 * values[1] > 0 and values[2] == 0


def test_spatial_frequency_of_a_volume_adds_the_slice_direction(ct):
    volume = np.stack([ct, ct + 10.0, ct])  # 10 HU jumps between slices
    (value,) = spatial_frequency(volume[None])
    size = volume.size
    expected = math.sqrt(sum(np.sum(np.diff(volume, axis=ax) ** 2) for ax in range(3)) / size)
    assert value == pytest.approx(expected) and expected > 0


def _scd_direct(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return np.corrcoef((f - b).ravel(), a.ravel())[0, 1] + np.corrcoef((f - a).ravel(), b.ravel())[0, 1]


def test_scd_matches_corrcoef(ct):
    a = ct
    b = ndimage.sobel(ct, axis=0)  # a second "modality" with other content: the edges
    fused = [0.5 * (a + b), np.maximum(a, b), a + 0.3 * b]
    got = scd(np.stack(fused), np.stack([a] * 3), np.stack([b] * 3))
    for value, f in zip(got, fused):
        assert value == pytest.approx(_scd_direct(f, a, b), rel=1e-10)
    # A fused image that is source A itself: F - A is constant, its correlation undefined and counted as 0.
    (only_a,) = scd(a[None], a[None], b[None])
    assert only_a == pytest.approx(np.corrcoef((a - b).ravel(), a.ravel())[0, 1])
    assert got[0] > only_a


def test_sharpness_rejects_bad_input(ct):
    with pytest.raises(InputError, match="same shape"):
        scd(ct[None], ct[None], ct[None, :64])
    with pytest.raises(InputError, match="NaN"):
        spatial_frequency(np.full((1, 8, 8), np.nan))
    with pytest.raises(InputError, match="shape"):
        spatial_frequency(ct)
