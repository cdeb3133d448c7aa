"""Placement against the danger zone (C_final, by hand, sampled) and the location prior C_loc."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.geometry import lesion_centroids
from medsynth.data.samples import load_sample
from medsynth.errors import CheckpointError, InputError
from medsynth.lesions.crop import ellipse_mask
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.fusion import Lesion, fuse
from medsynth.lesions.location import fit_location_prior, load_location_prior, save_location_prior
from medsynth.lesions.placement import (
    allowed_centres,
    box_centre,
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


def test_a_patch_with_an_empty_rim_is_only_placed_where_it_fits_whole():
    """Generated lesions often have empty border rows; the whole patch is pasted, so it must fit in the image."""
    footprint = np.zeros((9, 9), dtype=bool)
    footprint[4:7, 3:6] = True  # rows 0-3 and column 8 empty
    permissible = np.ones((20, 24), dtype=bool)
    allowed = allowed_centres(permissible, footprint)
    np.testing.assert_array_equal(allowed, _brute_force_allowed(permissible, footprint))
    assert not allowed[:4].any() and allowed[4, 4] and not allowed[:, 20:].any()
    centres = sample_placements(permissible, [footprint] * 6, np.random.default_rng(1))
    fuse(np.zeros((20, 24)), [Lesion(np.ones((9, 9), np.float32), footprint)] * 6, centres)  # no lesion reaches outside


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


def test_hand_placement_on_a_placed_lesion_says_so_not_danger_zone(ct_danger):
    _, permissible = ct_danger
    footprint = ellipse_mask((9, 9))
    first = tuple(int(v) for v in np.argwhere(allowed_centres(permissible, footprint))[0])
    taken = np.zeros(permissible.shape, dtype=bool)
    rows, cols = footprint_slices(first, footprint.shape)
    taken[rows, cols] = footprint
    beside = (first[0], first[1] + 3)  # on permissible pixels, partly on the first lesion
    assert forbidden_overlap(permissible, footprint, beside) == 0
    covered = forbidden_overlap(~taken, footprint, beside)
    assert covered > 0
    with pytest.raises(InputError, match=rf"overlaps a lesion placed before by {covered} pixels") as refused:
        place_by_hand(permissible, footprint, beside, taken)
    assert "danger zone" not in str(refused.value)
    far = tuple(int(v) for v in np.argwhere(allowed_centres(permissible & ~taken, footprint))[-1])
    assert place_by_hand(permissible, footprint, far, taken) == far


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
    with pytest.raises(InputError, match=r"no permissible place is left for lesion 1 of 1 \(size 90x90\); place fewer"):
        sample_placements(permissible, [ellipse_mask((90, 90))], np.random.default_rng(0))


def _taken(centres, footprint: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    taken = np.zeros(shape, dtype=bool)
    for centre in centres:
        taken[footprint_slices(centre, footprint.shape)] |= footprint
    return taken


def test_sampled_lesions_keep_the_spacing_from_lesions_placed_earlier(ct_danger):
    """Over many seeds no two lesions, new or placed earlier (by hand or an earlier sample), are closer than the spacing."""
    _, permissible = ct_danger
    footprint = ellipse_mask((7, 7))
    spacing = 15.0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        earlier = sample_placements(permissible, [footprint] * 3, rng, min_spacing=spacing)
        free = permissible & ~_taken(earlier, footprint, permissible.shape)
        new = sample_placements(free, [footprint] * 4, rng, min_spacing=spacing, existing=earlier)
        assert len(new) == 4
        everything = np.asarray(earlier + new, dtype=float)
        distances = np.linalg.norm(everything[:, None] - everything[None], axis=-1)
        assert distances[np.triu_indices(len(everything), 1)].min() >= spacing, seed
        lesions = [Lesion(np.full(footprint.shape, 50.0, np.float32), footprint)] * len(everything)
        labels = fuse(np.zeros(permissible.shape, np.float32), lesions, [tuple(c) for c in everything.astype(int)]).labels
        assert set(np.unique(labels)) == set(range(8)) and not (labels > 0)[~permissible].any()


def test_lesions_known_only_as_a_label_map_count_for_the_spacing(ct_danger):
    _, permissible = ct_danger
    footprint = ellipse_mask((5, 5))
    labels = np.zeros(permissible.shape, dtype=np.uint16)
    inside = np.argwhere(allowed_centres(permissible, ellipse_mask((9, 9))))
    for label_id, (y, x) in enumerate(inside[:: len(inside) // 4][:4], start=1):
        labels[y - 4 : y + 5, x - 4 : x + 5][ellipse_mask((9, 9))] = label_id
    old = lesion_centroids(labels)
    for seed in range(30):
        new = sample_placements(
            permissible & (labels == 0), [footprint] * 3, np.random.default_rng(seed), min_spacing=12, existing=old
        )
        distances = np.linalg.norm(np.asarray(new, dtype=float)[:, None] - old[None], axis=-1)
        assert distances.min() >= 12


def test_an_impossible_request_says_what_blocks_it_instead_of_placing_fewer(ct_danger):
    _, permissible = ct_danger
    footprint = ellipse_mask((5, 5))
    earlier = [tuple(int(v) for v in np.argwhere(allowed_centres(permissible, footprint))[0])]
    free = permissible & ~_taken(earlier, footprint, permissible.shape)
    # The image's diagonal is 181 px: no second lesion can keep 200 px from the first.
    with pytest.raises(
        InputError,
        match=r"no permissible place is left for lesion 1 of 2 \(size 5x5\) at least 200 px from the 1 lesion\(s\) "
        r"placed earlier; place fewer or smaller lesions, lower the minimum spacing, or widen the permissible zone",
    ):
        sample_placements(free, [footprint] * 2, np.random.default_rng(0), min_spacing=200, existing=earlier)
    candidates = np.argwhere(allowed_centres(free, footprint))[:50]
    with pytest.raises(InputError, match=r"lesion 2 of 2 \(size 5x5\) among the location candidates at least 60 px "
                       r"from the 1 lesion\(s\) sampled before it; .* ask for more candidates"):
        sample_placements(free, [footprint] * 2, np.random.default_rng(0), candidates=candidates, min_spacing=60)


@pytest.mark.parametrize(
    ("coords", "pixel"),
    [((10.4989, 3.0), (10, 3)), ((10.4999, 2.5), (11, 3)), ((10.5, -0.2), (11, 0)), ((63.99999, 64.00001), (64, 64))],
)
def test_hand_placement_takes_the_pixel_holding_the_point(coords, pixel):
    """Pixel i covers [i - 0.5, i + 0.5); within 1/1000 px of a boundary (float32 noise) counts as on it."""
    permissible = np.ones((80, 80), dtype=bool)
    footprint = np.ones((1, 1), dtype=bool)
    assert place_by_hand(permissible, footprint, coords) == pixel
    assert box_centre((10, 20, 21, 31)) == (15, 25)


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
