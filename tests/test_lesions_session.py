"""The lesion session without a viewer, on the real CT slice: commit, Undo, Re-fuse after label edits,
placement by hand and sampled, export; and one fusion and one manifest record for it and the batch tool."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.errors import InputError
from medsynth.io import MedImage, read_image
from medsynth.lesions.batch import BatchOptions, synthesize_case
from medsynth.lesions.crop import lesion_crop
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.fusion import Blend, Lesion, fuse
from medsynth.lesions.location import LocationPrior, PriorOptions, prior_candidates
from medsynth.lesions.manifest import LesionRecord
from medsynth.lesions.placement import final_candidates
from medsynth.lesions.scene import Placement, draw_lesion, placed_mask
from medsynth.lesions.session import LesionSession, PlacementOptions, check_fits
from medsynth.lesions.singan_training import SinGANRunOptions, SinGANSettings, save_singan, train_to_end

TINY = SinGANSettings(min_size=17, iterations=30, width=8, layers=4, d_steps=1, g_steps=1)


@pytest.fixture(scope="module")
def ct() -> MedImage:
    return load_sample("ct_slice")


@pytest.fixture(scope="module")
def lesions(ct) -> list[Lesion]:
    """Two real tissue patches of the CT slice, made brighter so that their fusion is visible."""
    plane = np.asarray(ct.array, dtype=np.float32)
    return [Lesion(values + 200.0, mask) for values, mask in (lesion_crop(plane, box) for box in [(50, 50, 62, 62), (44, 44, 54, 56)])]


@pytest.fixture(scope="module")
def generator(ct, tmp_path_factory):
    """A tiny SinGAN on a CT crop, saved so that its path is what the manifest names."""
    values, mask = lesion_crop(np.asarray(ct.array, dtype=np.float32), (44, 44, 64, 64))
    crop = MedImage(values, "yx", tuple(ct.spacing), modality="CT", units="HU", name="crop")
    trained = train_to_end(crop, mask, TINY, run=SinGANRunOptions(log_every=100))
    path = save_singan(trained, tmp_path_factory.mktemp("model") / "lesion.safetensors")
    return dataclasses.replace(trained, path=path)


@pytest.fixture(scope="module")
def permissible(ct) -> np.ndarray:
    return bootstrap_danger(ct) == 1


def _expected_image(ct: MedImage, scene, blend: Blend = Blend()) -> np.ndarray:
    return fuse(np.asarray(ct.array), [p.lesion for p in scene], [p.centre for p in scene], ids=[p.label_id for p in scene],
                blend=blend.name, feather_px=blend.feather_px).image  # fmt: skip


def test_commit_and_undo_walk_the_states_and_tell_the_listeners(ct, lesions):
    session = LesionSession(ct)
    heard = []
    session.subscribe(lambda changed: heard.append((changed.scene, changed.blend)))
    first = (Placement(lesions[0], (60, 90), 1, 11),)
    second = (*first, Placement(lesions[1], (95, 70), 2, 12, 1.5))
    session.commit(first, Blend(), "")
    session.commit(second, Blend("feather", 4.0), "/models/lesion.safetensors")
    assert session.scene == second and len(session.history) == 2
    np.testing.assert_array_equal(session.fused.image.array, _expected_image(ct, second, Blend("feather", 4.0)))
    assert session.fused.labels.is_label and set(np.unique(session.fused.labels.array)) == {0, 1, 2}
    provenance = session.fused.image.synthetic
    assert provenance.checkpoint == "lesion.safetensors" and "lesion seeds 1:11 2:12" in provenance.description
    assert session.fused.image.units == "HU" and session.fused.image.spacing == ct.spacing

    assert session.undo() == first and session.blend == Blend()  # the blend it was fused with
    np.testing.assert_array_equal(session.fused.image.array, _expected_image(ct, first))
    assert session.fused.image.synthetic.checkpoint == ""
    assert session.undo() == () and session.fused.labels.array.max() == 0
    with pytest.raises(InputError, match="nothing to undo"):
        session.undo()
    assert [scene for scene, _ in heard] == [first, second, first, ()]


def test_a_refused_commit_changes_nothing(ct, lesions):
    session = LesionSession(ct)
    heard = []
    session.subscribe(heard.append)
    session.commit((Placement(lesions[0], (60, 90), 1, 1),), Blend(), "")
    state, fused = session.state, session.fused
    with pytest.raises(InputError, match="outside"):
        session.commit((Placement(lesions[1], (2, 2), 1, 1),), Blend(), "")  # the patch hangs off the image
    assert session.state is state and session.fused is fused and len(session.history) == 1 and len(heard) == 1


def test_re_fuse_follows_moved_and_deleted_labels_and_refuses_forbidden_places(ct, lesions, permissible):
    session = LesionSession(ct)
    with pytest.raises(InputError, match="nothing to re-fuse"):
        session.re_fuse(np.zeros(ct.array.shape, np.uint16), permissible, Blend())
    centres = [(100, 40), (100, 90)]  # soft tissue, far from the danger zone's edges
    session.commit(tuple(Placement(lesion, c, k + 1, k) for k, (lesion, c) in enumerate(zip(lesions, centres))), Blend(), "")
    labels = np.array(session.fused.labels.array)
    moved = np.zeros_like(labels)
    moved[np.roll(labels == 1, 3, axis=1)] = 1  # lesion 1 three pixels to the right, lesion 2 deleted
    session.re_fuse(moved, permissible, Blend("feather", 3.0))
    assert [(p.label_id, p.centre) for p in session.scene] == [(1, (100, 43))] and session.blend.name == "feather"
    np.testing.assert_array_equal(session.fused.labels.array, moved)

    state = session.state
    forbidden = np.zeros_like(labels)
    y, x = np.argwhere(~permissible)[len(np.argwhere(~permissible)) // 2]
    forbidden[placed_mask(dataclasses.replace(session.scene[0], centre=(int(y), int(x))), labels.shape)] = 1
    with pytest.raises(InputError, match="danger zone|outside"):
        session.re_fuse(forbidden, permissible, Blend())
    assert session.state is state


def test_placing_by_hand_and_sampling_with_a_trained_model(ct, generator, permissible):
    session = LesionSession(ct)
    options = PlacementOptions(count=3, seed=5, min_spacing=12.0)
    forbidden = tuple(int(v) for v in np.argwhere(~permissible)[0])
    with pytest.raises(InputError, match="danger zone|outside"):
        session.place(generator, permissible, forbidden, options)
    assert session.scene == () and session.fused is None

    session.place(generator, permissible, (100.2, 60.4), options, size=1.2)
    (first,) = session.scene
    assert (first.label_id, first.centre, first.size) == (1, (100, 60), 1.2)
    lesion, seed = draw_lesion(generator, first.seed, 1.2, 0)
    assert seed == first.seed and np.array_equal(lesion.values, first.lesion.values)  # the seed draws it again
    with pytest.raises(InputError, match="overlaps a lesion placed before"):
        session.place(generator, permissible, (101, 61), options)

    session.sample(generator, permissible, options)
    assert [p.label_id for p in session.scene] == [1, 2, 3, 4]
    labels = session.fused.labels.array
    assert not labels[~permissible].any()
    centres = np.array([p.centre for p in session.scene], dtype=float)
    assert np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(4, 1)].min() >= 12.0

    again = LesionSession(ct)
    again.place(generator, permissible, (100.2, 60.4), options, size=1.2)
    again.sample(generator, permissible, options)
    assert [(p.centre, p.seed) for p in again.scene] == [(p.centre, p.seed) for p in session.scene]
    np.testing.assert_array_equal(again.fused.image.array, session.fused.image.array)


def test_sampling_goes_to_the_priors_candidates(ct, generator, permissible):
    prior = LocationPrior(points=np.array([[0.78, 0.3], [0.78, 0.7]]), bandwidth=(0.05, 0.05))  # soft tissue
    prior_options = PriorOptions(top_k=20, min_distance=3)
    session = LesionSession(ct)
    session.sample(generator, permissible, PlacementOptions(count=2, seed=1, min_spacing=0.0), prior, prior_options)
    _, candidates, _ = prior_candidates(prior, session.plane, prior_options)
    for placement in session.scene:
        allowed = final_candidates(candidates, permissible, placement.lesion.mask)
        assert any(tuple(c) == placement.centre for c in allowed)


def test_a_volume_gets_its_lesions_in_the_one_slice(ct, lesions):
    array = np.stack([ct.array, np.flip(ct.array, 1), ct.array])
    volume = MedImage(array, "zyx", (2.0, *ct.spacing), modality="CT", units="HU", name="ct volume")
    session = LesionSession(volume, 1)
    session.commit((Placement(lesions[0], (60, 90), 1, 0),), Blend(), "")
    image, labels = session.fused.image.array, session.fused.labels.array
    assert image.shape == labels.shape == array.shape
    np.testing.assert_array_equal(image[[0, 2]], array[[0, 2]])
    assert not labels[[0, 2]].any() and labels[1].any()
    np.testing.assert_array_equal(image[1], fuse(array[1], [lesions[0]], [(60, 90)]).image)


def test_export_writes_every_file_with_the_batch_tools_records(ct, generator, permissible, tmp_path):
    session = LesionSession(ct)
    options = PlacementOptions(count=2, seed=2, min_spacing=0.0)
    with pytest.raises(InputError, match="nothing to export"):
        session.export(tmp_path / "none", options)
    session.sample(generator, permissible, options)
    edited = np.array(session.fused.labels.array)
    edited[edited == 2] = 0
    with pytest.raises(InputError, match="edited since the last fusion"):
        session.export(tmp_path, options, shown_labels=edited)

    written = session.export(tmp_path, options, shown_labels=session.fused.labels.array)
    assert all(path.exists() for path in written)
    assert {path.name for path in written} >= {"ct_slice_lesions.nii.gz", "ct_slice_lesions_labels.nii.gz", "ct_slice_lesions_seg.dcm"}
    image = read_image(tmp_path / "ct_slice_lesions.nii.gz")
    np.testing.assert_allclose(image.array, session.fused.image.array, atol=1e-3)
    manifest = json.loads((tmp_path / "ct_slice_lesions.json").read_text())
    assert manifest["lesion_model"] == str(generator.path) and manifest["slice"] is None
    fields = [f.name for f in dataclasses.fields(LesionRecord)]
    assert all(list(record) == fields for record in manifest["lesions"])
    for record, placement in zip(manifest["lesions"], session.scene):
        pixels = np.argwhere(session.fused.labels.array == placement.label_id)
        assert [record[k] for k in ("bbox_y0", "bbox_x0")] == list(pixels.min(axis=0)) and record["pixels"] == len(pixels)
        assert (record["lesion_seed"], record["size_factor"]) == (placement.seed, placement.size)
    with pytest.raises(InputError, match="exist already"):
        session.export(tmp_path, options)


def test_a_batch_image_is_the_sessions_fusion_of_its_manifest_records(ct, generator, permissible):
    """The batch tool and the widget fuse with the same `fuse_scene`; a manifest record draws its lesion again."""
    options = BatchOptions(per_image=2, size_range=(0.9, 1.1), blend="feather")
    case = synthesize_case(ct, permissible.astype(np.uint8), generator, index=3, seed=7, options=options)
    assert all(isinstance(record, LesionRecord) for record in case.lesions)
    scene = tuple(
        Placement(draw_lesion(generator, r.lesion_seed, r.size_factor, 0)[0], (r.centre_y, r.centre_x), r.label_id,
                  r.lesion_seed, r.size_factor)  # fmt: skip
        for r in case.lesions
    )
    session = LesionSession(ct)
    session.commit(scene, Blend("feather"), "")
    np.testing.assert_array_equal(session.fused.image.array, case.image.array)
    np.testing.assert_array_equal(session.fused.labels.array, case.labels.array)


def test_a_lesion_that_fits_nowhere_is_refused_naming_the_size_to_change():
    """Larger than the plane: the option and the largest size that fits; larger than the permissible zone; a dragged box."""
    footprint = np.ones((160, 160), dtype=bool)
    everywhere = np.ones((128, 128), dtype=bool)
    lower = r'larger than the 128x128 px image plane; lower the placement option "size" \(now 8\) to 6\.4 or less'
    with pytest.raises(InputError, match=lower):
        check_fits(footprint, everywhere, 8.0)
    with pytest.raises(InputError, match="larger than the 128x128 px image plane; drag a smaller box$"):
        check_fits(footprint, everywhere, 8.0, boxed=True)
    zone = np.zeros((128, 128), dtype=bool)
    zone[40:70, 40:70] = True
    nowhere = r'fits nowhere in the permissible zone; lower the placement option "size" \(now 2\)'
    with pytest.raises(InputError, match=nowhere):
        check_fits(np.ones((40, 40), dtype=bool), zone, 2.0)
    check_fits(np.ones((30, 30), dtype=bool), zone, 1.5)  # exactly the zone's size fits
