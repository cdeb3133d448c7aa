"""The danger-zone bootstrap on real CT, radiograph and MR images."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.lesions.danger import DangerRules, bootstrap_danger
from medsynth.settings import parse


def _downsampled(image: MedImage, step: int) -> MedImage:
    return image.with_array(np.ascontiguousarray(image.array[::step, ::step]), spacing=tuple(s * step for s in image.spacing))


def test_ct_bone_and_outside_air_are_forbidden_soft_tissue_permitted():
    image = load_sample("ct_slice")
    hu = np.asarray(image.array, dtype=np.float32)
    danger = bootstrap_danger(image)
    assert danger.shape == hu.shape and danger.dtype == np.uint8 and set(np.unique(danger)) == {0, 1}
    assert not danger[hu > 300].any()  # every bone pixel
    assert not danger[hu < -900].any()  # air
    soft = (hu > -100) & (hu < 100)
    assert danger[soft].mean() > 0.7
    # The margin grows with the rule: a wider one forbids more.
    wider = bootstrap_danger(image, parse(DangerRules, {"bone_margin_mm": 10}))
    assert wider.sum() < danger.sum() and not (wider & ~danger).any()


def test_radiograph_brightest_pixels_are_forbidden_and_the_body_is_mostly_permitted():
    image = _downsampled(load_sample("chest_xray"), 8)
    assert image.modality == "CR"
    values = np.asarray(image.array, dtype=np.float32)
    danger = bootstrap_danger(image)
    assert not danger[values > np.percentile(values, 99)].any()
    assert 0.4 < danger.mean() < 0.95
    # The darkest part of the body (lungs on a chest film) is where lesions may go.
    assert danger[values < np.percentile(values, 20)].mean() > 0.5


def test_mr_outline_forbids_the_background_and_permits_the_body():
    image = _downsampled(load_sample("mr_slice"), 4)
    values = np.asarray(image.array, dtype=np.float32)
    danger = bootstrap_danger(image)
    assert danger[values <= np.percentile(values, 5)].mean() < 0.05
    assert danger[values > np.percentile(values, 90)].mean() > 0.9


def test_volumes_work_and_unusable_images_are_refused():
    image = load_sample("ct_slice")
    volume = MedImage(np.stack([image.array] * 3), "zyx", (2.0, *image.spacing), modality="CT", units="HU")
    danger = bootstrap_danger(volume)
    assert danger.shape == (3, 128, 128)
    np.testing.assert_array_equal(danger[1], bootstrap_danger(image))
    with pytest.raises(InputError, match="constant"):
        bootstrap_danger(MedImage(np.zeros((16, 16), np.float32), "yx", (1.0, 1.0), modality="MR"))
    with pytest.raises(InputError, match="grey 2D image"):
        bootstrap_danger(MedImage(np.zeros((4, 4, 3), np.uint8), "yxc", (1.0, 1.0)))
