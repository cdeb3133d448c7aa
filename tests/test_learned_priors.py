"""The learned lesion models trained with the engine: `danger-unet` and `lesion-heatmap` on the real CT slice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import peak_local_max

from medsynth.cli import main
from medsynth.data.normalization import window_normalization
from medsynth.data.paired import PairedSliceDataset
from medsynth.data.samples import load_sample
from medsynth.errors import CheckpointError, InputError
from medsynth.io import write_nifti
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.learned import (
    HeatmapModel,
    danger_for,
    load_danger_source,
    load_location_model,
    predict_danger,
    predict_heatmap,
)
from medsynth.lesions.location import LocationPrior, fit_location_prior, save_location_prior, top_candidates
from medsynth.training.config import TrainConfig
from medsynth.training.events import Finished
from medsynth.training.generate import generate
from medsynth.training.trainer import train

SMALL_UNET = {"width": 8, "depth": 2, "resolution": 64, "batch_size": 4, "lr": 3e-3}


def _train(tmp_path, recipe: str, data, steps: int, **options):
    config = TrainConfig(
        recipe=recipe,
        out_dir=tmp_path,
        steps=steps,
        sample_every=0,
        checkpoint_every=10**6,
        device="cpu",
        **options,
    )
    finished = list(train(config, data))[-1]
    assert isinstance(finished, Finished) and finished.reason == "completed"
    return finished.checkpoint


def _forbidden_iou(predicted: np.ndarray, target: np.ndarray) -> float:
    a, b = predicted == 0, target == 0
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def ct():
    return load_sample("ct_slice")


@pytest.fixture(scope="module")
def danger(ct):
    return bootstrap_danger(ct)


@pytest.fixture(scope="module")
def danger_checkpoint(ct, danger, tmp_path_factory):
    return _train(
        tmp_path_factory.mktemp("danger"),
        "danger-unet",
        [(ct, danger)],
        40,
        settings=SMALL_UNET,
    )


@pytest.mark.slow
def test_danger_unet_learns_the_bootstrap_mask(ct, danger, danger_checkpoint, tmp_path):
    untrained = _train(tmp_path, "danger-unet", [(ct, danger)], 1, settings=SMALL_UNET)
    predicted = predict_danger(danger_checkpoint, ct)
    assert predicted.shape == ct.array.shape and predicted.dtype == np.uint8
    assert set(np.unique(predicted)) <= {0, 1}
    # Calling every pixel forbidden scores IoU = the forbidden fraction (0.40 here), the best a
    # predictor blind to the image can do; 0.7 needs the body outline and most bone right.
    trained_iou, untrained_iou = (
        _forbidden_iou(predicted, danger),
        _forbidden_iou(predict_danger(untrained, ct), danger),
    )
    assert trained_iou > 0.7
    assert trained_iou > untrained_iou + 0.25
    assert _forbidden_iou(np.zeros_like(danger), danger) == pytest.approx((danger == 0).mean())


def test_danger_prediction_of_a_volume_is_slice_by_slice(ct, danger_checkpoint):
    plane = predict_danger(danger_checkpoint, ct)
    volume = ct.with_array(
        np.stack([ct.array, ct.array[::-1]]),
        axes="zyx",
        spacing=(2.0, *ct.spacing),
        origin=None,
        direction=None,
    )
    predicted = predict_danger(danger_checkpoint, volume)
    assert predicted.shape == (2, *ct.array.shape)
    np.testing.assert_array_equal(predicted[0], plane)


def test_danger_checkpoint_is_refused_where_a_heatmap_or_an_image_is_asked(ct, danger_checkpoint):
    with pytest.raises(CheckpointError, match="lesion-heatmap"):
        predict_heatmap(danger_checkpoint, ct)
    with pytest.raises(InputError, match="predict_danger"):
        generate(danger_checkpoint, 2, device="cpu")


def test_target_on_another_grid_is_refused_with_the_fix(ct, danger, tmp_path):
    with pytest.raises(InputError, match=r"shape \(64, 128\).*resample it onto the image"):
        _train(tmp_path, "danger-unet", [(ct, danger[::2])], 2, settings=SMALL_UNET)
    with pytest.raises(InputError, match="not an \\(image, target\\) pair"):
        _train(tmp_path, "danger-unet", [ct], 2, settings=SMALL_UNET)
    assert not list(tmp_path.glob("*.safetensors"))


def test_paired_items_stack_normalised_image_and_unchanged_mask(ct, danger):
    dataset = PairedSliceDataset([ct], [danger], window_normalization(40, 400), 64)
    item = dataset[0]
    assert item.shape == (2, 64, 64)
    assert -1.0 <= float(item[0].min()) and float(item[0].max()) <= 1.0
    assert set(np.unique(item[1].numpy())) == {
        0.0,
        1.0,
    }  # nearest neighbours keep mask values
    assert abs(float(item[1].mean()) - float(danger.mean())) < 0.02


def _lesioned(ct, permissible: np.ndarray, rng: np.random.Generator, n: int):
    """The CT slice with `n` discs of 180 HU (radius 4 px) in permissible tissue, their label map and centres."""
    inside = np.argwhere(ndimage.distance_transform_edt(permissible) > 8)
    centres = inside[rng.choice(len(inside), n, replace=False)]
    yy, xx = np.mgrid[: ct.array.shape[0], : ct.array.shape[1]]
    values, labels = (
        np.array(ct.array, dtype=np.int32),
        np.zeros(ct.array.shape, np.uint8),
    )
    for k, (y, x) in enumerate(centres):
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= 16
        values[disc], labels[disc] = 180, k + 1
    return ct.with_array(values), labels, centres


@pytest.mark.slow
def test_lesion_heatmap_peaks_at_annotated_and_new_lesions(ct, danger, tmp_path):
    rng = np.random.default_rng(0)
    pairs = [_lesioned(ct, danger, rng, 2)[:2] for _ in range(4)]
    checkpoint = _train(
        tmp_path,
        "lesion-heatmap",
        pairs,
        150,
        settings={**SMALL_UNET, "sigma": 0.06},
        normalization="window",
        window_center=40,
        window_width=400,
    )
    held_out = _lesioned(ct, danger, rng, 3)
    for image, labels, centres in [(*pairs[0], None), held_out]:
        heat = predict_heatmap(checkpoint, image)
        assert heat.shape == labels.shape and heat.dtype == np.float32
        assert heat.sum() == pytest.approx(1.0, rel=1e-4)  # the convention of LocationPrior.heatmap
        annotated = ndimage.center_of_mass(labels > 0, labels, range(1, labels.max() + 1))
        peaks = peak_local_max(heat, min_distance=5, num_peaks=len(annotated), exclude_border=False)
        distances = np.linalg.norm(peaks[:, None, :] - np.asarray(annotated)[None], axis=-1).min(axis=0)
        # Within the lesion radius (4 px) plus two training pixels (64 px for 128): each lesion found.
        assert distances.max() <= 8.0, distances


@pytest.fixture(scope="module")
def heatmap_checkpoint(ct, danger, tmp_path_factory):
    """A briefly trained lesion-heatmap: enough to test loading and plumbing, not accuracy."""
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[60:70, 50:60] = 1
    return _train(tmp_path_factory.mktemp("heatmap"), "lesion-heatmap", [(ct, labels)], 3, settings=SMALL_UNET)


def test_location_model_is_told_by_content_prior_json_or_heatmap_checkpoint(ct, danger_checkpoint, heatmap_checkpoint, tmp_path):
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[40:50, 30:40] = 1
    prior = fit_location_prior([labels])
    # The file name says nothing: a prior saved as ".safetensors" is still read as the JSON prior.
    disguised = save_location_prior(prior, tmp_path / "prior.safetensors")
    loaded = load_location_model(disguised)
    assert isinstance(loaded, LocationPrior) and loaded.describe() == "location prior from 1 lesions"
    np.testing.assert_array_equal(loaded.plane_heatmap(np.asarray(ct.array)), prior.heatmap(ct.array.shape))

    model = load_location_model(heatmap_checkpoint)
    assert isinstance(model, HeatmapModel) and model.describe().startswith("lesion-heatmap model checkpoint-")
    heat = model.plane_heatmap(np.asarray(ct.array))
    np.testing.assert_allclose(heat, predict_heatmap(heatmap_checkpoint, ct), rtol=1e-5, atol=1e-9)
    peaks, densities = top_candidates(heat, 5)
    assert len(peaks) == 5 and np.all(np.diff(densities) <= 0) and densities[0] == heat.max()

    with pytest.raises(CheckpointError, match="needs a 'lesion-heatmap' checkpoint"):
        load_location_model(danger_checkpoint)
    image_file = write_nifti(ct, tmp_path / "ct.nii.gz")
    with pytest.raises(CheckpointError, match="neither a location prior .* nor a lesion-heatmap checkpoint"):
        load_location_model(image_file)
    not_a_prior = tmp_path / "other.json"
    not_a_prior.write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a medsynth location prior"):
        load_location_model(not_a_prior)


def test_danger_source_is_a_checkpoint_or_a_mask_on_the_image_grid(ct, danger, danger_checkpoint, heatmap_checkpoint, tmp_path):
    predicted = danger_for(load_danger_source(danger_checkpoint), ct)
    np.testing.assert_array_equal(predicted, predict_danger(danger_checkpoint, ct))
    mask_file = write_nifti(ct.with_array(danger, is_label=True, units=""), tmp_path / "danger_mask.nii.gz")
    np.testing.assert_array_equal(danger_for(load_danger_source(mask_file), ct), danger)

    with pytest.raises(CheckpointError, match="needs a 'danger-unet' checkpoint"):
        load_danger_source(heatmap_checkpoint)
    image_as_mask = load_danger_source(write_nifti(ct, tmp_path / "ct.nii.gz"))
    with pytest.raises(InputError, match=r"holds values .* a danger mask holds 1 \(permissible\) and 0 \(forbidden\)"):
        danger_for(image_as_mask, ct)
    half = write_nifti(ct.with_array(danger[:64], is_label=True, units=""), tmp_path / "half_mask.nii.gz")
    with pytest.raises(InputError, match=r"shape \(64, 128\) but .* has \(128, 128\)"):
        danger_for(load_danger_source(half), ct)


def test_recipes_command_lists_both_models(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "danger-unet" in out and "lesion-heatmap" in out
