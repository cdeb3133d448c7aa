"""Placement against the danger zone (C_final, by hand, sampled) and the location prior C_loc."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.errors import CheckpointError, InputError
from medsynth.lesions.crop import ellipse_mask
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.fusion import Lesion, fuse
from medsynth.lesions.location import fit_location_prior, lesion_centroids, load_location_prior, save_location_prior
from medsynth.lesions.placement import (
    allowed_centres,
    final_candidates,
    footprint_slices,
    forbidden_overlap,
    inside_image,
    place_by_hand,
    sample_placements,
)


@pytest.fixture(scope="module")
def ct_danger() -> tuple[np.ndarray, np.ndarray]:
    image = load_sample("ct_slice")
    return np.asarray(image.array, dtype=np.float32), bootstrap_danger(image).astype(bool)


def _brute_force_allowed(permissible: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    out = np.zeros(permissible.shape, dtype=bool)
    for y in range(permissible.shape[0]):
        for x in range(permissible.shape[1]):
            if inside_image((y, x), footprint.shape, permissible.shape):
                out[y, x] = forbidden_overlap(permissible, footprint, (y, x)) == 0
    return out


@pytest.mark.parametrize("shape", [(3, 3), (4, 5), (6, 2)])
def test_allowed_centres_equal_a_direct_check_of_every_footprint(shape):
    rng = np.random.default_rng(sum(shape))
    permissible = rng.random((20, 24)) > 0.15
    footprint = rng.random(shape) > 0.3
    footprint[0, 0] = True
    np.testing.assert_array_equal(allowed_centres(permissible, footprint), _brute_force_allowed(permissible, footprint))


@pytest.mark.slow
def test_no_lesion_pixel_lands_in_the_danger_zone_over_thousands_of_placements(ct_danger):
    plane, permissible = ct_danger
    assert 0.2 < permissible.mean() < 0.9  # the real CT has both kinds of pixels
    rng = np.random.default_rng(0)
    placements = 0
    for run in range(300):
        footprints = [ellipse_mask(tuple(rng.integers(3, 15, size=2))) for _ in range(7)]
        centres = sample_placements(permissible, footprints, rng, min_spacing=3)
        result = fuse(plane, [Lesion(np.full(f.shape, 50.0, np.float32), f) for f in footprints], centres)
        assert not (result.labels.astype(bool) & ~permissible).any()
        assert set(np.unique(result.labels)) == set(range(len(footprints) + 1))  # no lesion hides another
        placements += len(centres)
    assert placements >= 2000


def test_hand_placement_is_refused_on_bone_and_accepted_in_soft_tissue(ct_danger):
    plane, permissible = ct_danger
    footprint = ellipse_mask((9, 9))
    bone = np.argwhere(plane > 300)
    on_bone = tuple(int(v) for v in bone[len(bone) // 2])
    expected = forbidden_overlap(permissible, footprint, on_bone)
    with pytest.raises(InputError, match=rf"lesion at \({on_bone[0]}, {on_bone[1]}\) overlaps the danger zone by {expected} pixels; choose another place"):
        place_by_hand(permissible, footprint, on_bone)
    free = tuple(int(v) for v in np.argwhere(allowed_centres(permissible, footprint))[0])
    assert place_by_hand(permissible, footprint, free) == free
    with pytest.raises(InputError, match="outside"):
        place_by_hand(permissible, footprint, (1, 1))


def test_final_candidates_keep_only_whole_footprints_in_permissible_pixels(ct_danger):
    _, permissible = ct_danger
    footprint = ellipse_mask((11, 7))
    candidates = np.argwhere(np.ones(permissible.shape))[::37]
    kept = final_candidates(candidates, permissible, footprint)
    assert 0 < len(kept) < len(candidates)
    for y, x in kept:
        rows, cols = footprint_slices((y, x), footprint.shape)
        assert permissible[rows, cols][footprint].all()


def test_sampling_is_seeded_spaced_and_says_when_nothing_fits(ct_danger):
    _, permissible = ct_danger
    footprints = [ellipse_mask((8, 8))] * 4
    first = sample_placements(permissible, footprints, np.random.default_rng(3), min_spacing=20)
    again = sample_placements(permissible, footprints, np.random.default_rng(3), min_spacing=20)
    assert first == again
    points = np.asarray(first)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert distances[np.triu_indices(4, 1)].min() >= 20
    with pytest.raises(InputError, match="no permissible place"):
        sample_placements(permissible, [ellipse_mask((90, 90))], np.random.default_rng(0))


def test_sampling_from_candidates_uses_only_candidates_with_weight(ct_danger):
    _, permissible = ct_danger
    footprint = ellipse_mask((5, 5))
    allowed = np.argwhere(allowed_centres(permissible, footprint))
    candidates = allowed[[0, len(allowed) // 2, -1]]
    weights = np.array([0.0, 1.0, 0.0])
    centre = sample_placements(permissible, [footprint], np.random.default_rng(1), candidates=candidates, weights=weights)
    assert centre == [tuple(int(v) for v in candidates[1])]


def test_location_prior_peaks_at_annotated_lesions_and_round_trips(tmp_path):
    labels = np.zeros((100, 120), dtype=np.uint8)
    labels[20:30, 80:90] = 1  # one lesion around (24.5, 84.5)
    labels[60:64, 10:16] = 2
    labels[70:74, 12:18] = 2  # id 2 twice: two lesions
    centroids = lesion_centroids(labels)
    np.testing.assert_allclose(sorted(map(tuple, centroids)), [(24.5, 84.5), (61.5, 12.5), (71.5, 14.5)])

    big = np.kron(labels, np.ones((2, 2), dtype=np.uint8))  # the same anatomy at twice the size
    prior = fit_location_prior([labels, big])
    heat = prior.heatmap((50, 60))
    assert heat.shape == (50, 60) and abs(float(heat.sum()) - 1.0) < 1e-4
    peaks, scores = prior.candidates((100, 120), k=2, min_distance=10)
    assert len(peaks) == 2 and scores[0] >= scores[1]
    assert min(np.linalg.norm(peaks - np.array([24.5, 84.5]), axis=1)) < 4

    path = save_location_prior(prior, tmp_path / "prior.json")
    loaded = load_location_prior(path)
    np.testing.assert_allclose(loaded.heatmap((100, 120)), prior.heatmap((100, 120)))
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="not a medsynth location prior"):
        load_location_prior(tmp_path / "bad.json")
    with pytest.raises(InputError, match="no lesions"):
        fit_location_prior([np.zeros((10, 10))])
