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
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.learned import predict_danger, predict_heatmap
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
        window=(40, 400),
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


def test_recipes_command_lists_both_models(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "danger-unet" in out and "lesion-heatmap" in out
