"""Temporal consistency on the real 120-frame ultrasound cine: real motion vs frozen and shuffled frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats
from skimage.transform import resize

from medsynth.errors import InputError
from medsynth.io import read
from medsynth.metrics import temporal_consistency


@pytest.fixture(scope="module")
def cine() -> np.ndarray:
    """Frames 0-19 and 40-59 of the echocardiography cine, gray, the 400x400 sector region resized to 64x64 (0..255)."""
    from medsynth.data.samples import sample_path

    image = read(sample_path("us_cine"))[0]
    assert image.axes == "tyx" and image.array.shape == (120, 480, 640)
    frames = np.asarray(image.array[np.r_[0:20, 40:60], 40:440, 120:520], dtype=np.float32)
    return resize(frames, (40, 64, 64), anti_aliasing=True, preserve_range=True).astype(np.float32)


@pytest.fixture(scope="module")
def real(cine) -> np.ndarray:
    return cine[:20]


@pytest.fixture(scope="module")
def later(cine) -> np.ndarray:
    """Frames 40-59 of the same cine: they move like the real ones, a stand-in for a good generator."""
    return cine[20:40]


@pytest.mark.slow
def test_frozen_and_shuffled_sequences_score_clearly_worse(real, later):
    frozen = np.repeat(later[:1], 20, axis=0)
    shuffled = later[np.random.default_rng(0).permutation(20)]
    good = temporal_consistency(real, later)
    still = temporal_consistency(real, frozen)
    jumpy = temporal_consistency(real, shuffled)
    for bad in (still, jumpy):
        assert bad.diff_wasserstein > 5 * good.diff_wasserstein
        assert bad.flow_wasserstein > 5 * good.flow_wasserstein
    # The frozen sequence warps perfectly (error 0) but does not move at all; real motion has error > 0.
    assert np.all(still.fake.warp_error == 0) and np.all(still.fake.flow_magnitude == 0)
    assert good.real.warp_error.mean() > 0
    assert jumpy.fake.warp_error.mean() > 1.5 * good.real.warp_error.mean()


def test_distances_are_scipy_wasserstein_of_direct_frame_differences(real, later):
    report = temporal_consistency(real, later)
    span = float(real.max() - real.min())
    diffs_real = np.abs(real[1:] - real[:-1]) / span
    diffs_fake = np.abs(later[1:] - later[:-1]) / span
    assert report.diff_wasserstein == pytest.approx(
        stats.wasserstein_distance(diffs_real.ravel(), diffs_fake.ravel()), rel=1e-5
    )
    np.testing.assert_allclose(report.real.diff_curve, diffs_real.mean(axis=(1, 2)), rtol=1e-5)
    # Against a motionless sequence, W1 is the real sequence's mean difference and mean flow (a point mass at 0).
    frozen = temporal_consistency(real, np.repeat(real[:1], 5, axis=0))
    assert frozen.diff_wasserstein == pytest.approx(diffs_real.mean(), rel=1e-5)
    assert frozen.flow_wasserstein == pytest.approx(frozen.real.flow_magnitude.mean(), rel=1e-5)


def test_known_translation_gives_its_flow_and_a_small_warp_error(real):
    """A frame moved 2 px down and 1 px right: flow magnitude ~ sqrt(5) in the interior, warping undoes it."""
    frame = real[5]
    moved = ndimage.shift(frame, (2, 1), order=1, mode="nearest")
    report = temporal_consistency(np.stack([frame, moved]), np.stack([frame, frame]))
    interior = report.real.flow_magnitude[0, 12:-12, 12:-12]
    tissue = frame[12:-12, 12:-12] > np.percentile(frame, 60)  # flow is defined where there is texture
    assert np.median(interior[tissue]) == pytest.approx(np.sqrt(5), rel=0.15)
    assert report.real.warp_error[0] < 0.5 * report.real.diff_curve[0]


def test_report_curves_and_summary(real, later):
    report = temporal_consistency(real, later[:12])
    curves = report.curves()
    assert len(curves["diff_real"]) == 19 and len(curves["flow_fake"]) == 11 and len(curves["warp_error_fake"]) == 11
    summary = report.summary()
    assert summary["warp_error_real"] == pytest.approx(np.mean(curves["warp_error_real"]))
    assert summary["mean_flow_fake"] == pytest.approx(report.fake.flow_magnitude.mean())


def test_tvl1_flow_agrees_on_the_ranking(real, later):
    good = temporal_consistency(real[:8], later[:8], flow="tvl1")
    still = temporal_consistency(real[:8], np.repeat(later[:1], 8, axis=0), flow="tvl1")
    assert still.flow_wasserstein > 3 * good.flow_wasserstein


@pytest.mark.parametrize(
    "fake, kwargs, message",
    [
        (np.zeros((1, 64, 64)), {}, "at least 2"),
        (np.zeros((5, 32, 32)), {}, "same frame size"),
        (np.full((5, 64, 64), np.nan), {}, "NaN"),
        (np.zeros((5, 64)), {}, "shape"),
        (np.zeros((5, 64, 64)), {"flow": "farneback"}, "unknown flow"),
        (np.zeros((5, 64, 64)), {"data_range": 0.0}, "not positive"),
    ],
)
def test_bad_input_is_rejected(real, fake, kwargs, message):
    with pytest.raises(InputError, match=message):
        temporal_consistency(real, fake, **kwargs)
