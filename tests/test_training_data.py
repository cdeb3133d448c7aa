"""Datasets, normalisation, sampling and augmentation on real images (MNI152, nibabel's 4D example)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.data.augment import augment_batch
from medsynth.data.datasets import ClipDataset, PatchDataset, SliceDataset, StepSampler, as_medimage
from medsynth.data.normalization import Normalization, percentile_normalization, window_normalization
from medsynth.errors import InputError
from medsynth.io import read_image


@pytest.fixture(scope="module")
def mni():
    from medsynth.data.samples import sample_path

    return read_image(sample_path("mni152"))


class IndexOnlyArray:
    """An array that records every index it is read with and refuses to be converted whole."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads: list[int] = []

    def __getitem__(self, index):
        out = np.asarray(self._array[index])
        self.reads.append(out.size)
        return out

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was converted")


def test_percentile_normalization_maps_percentiles_to_unit_range(mni):
    norm = percentile_normalization([mni.array])
    low, high = np.percentile(mni.array, [0.5, 99.5])
    assert norm.low == pytest.approx(low) and norm.high == pytest.approx(high, rel=0.02)
    mapped = norm.apply(mni.array[90])
    assert mapped.dtype == np.float32 and mapped.min() >= -1 and mapped.max() <= 1
    inside = (mni.array[90] >= norm.low) & (mni.array[90] <= norm.high)
    np.testing.assert_allclose(norm.invert(mapped)[inside], mni.array[90][inside], atol=1e-3)


def test_window_normalization_in_hu_and_bad_windows():
    norm = window_normalization(40, 400)
    assert (norm.low, norm.high) == (-160, 240)
    np.testing.assert_allclose(norm.apply(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])), [-1, -1, 0, 1, 1])
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(InputError, match="width"):
        window_normalization(40, 0)
    with pytest.raises(InputError, match="constant"):
        percentile_normalization([np.full((4, 4), 7.0)])


def test_slice_dataset_skips_empty_axial_slices_of_mni(mni):
    norm = percentile_normalization([mni.array])
    data = SliceDataset([mni], norm, size=64, slice_axis=0, min_foreground=0.05)
    kept = {index[0] for _, index in data.items}
    fractions = [(norm.apply(mni.array[z]) > -0.9).mean() for z in range(mni.array.shape[0])]
    assert kept == {z for z, f in enumerate(fractions) if f >= 0.05}
    assert 0 < len(data) < mni.array.shape[0]
    item = data[len(data) // 2]
    assert item.shape == (1, 64, 64) and item.dtype == torch.float32
    assert item.min() >= -1 and item.max() <= 1 and item.max() > 0.5
    # 233 x 197 mm slices padded to 233 px square, shown on 64 px.
    assert data.pixel_spacing == pytest.approx((233 / 64, 233 / 64))
    described = data.describe()
    assert described["images"][0]["shape"] == [189, 233, 197] and described["items"] == len(data)
    assert len(described["content_sha256"]) == 64


def test_slice_axis_chooses_the_plane(mni):
    norm = percentile_normalization([mni.array])
    coronal = SliceDataset([mni], norm, size=64, slice_axis=1)
    assert {index[1] for _, index in coronal.items} <= set(range(233))
    assert all(index[0] == slice(None) for _, index in coronal.items)
    with pytest.raises(InputError, match="slice axis"):
        SliceDataset([mni], norm, size=64, slice_axis=3)


def test_datasets_read_lazily_one_slice_at_a_time(mni):
    lazy = IndexOnlyArray(mni.array)
    image = as_medimage(lazy)
    norm = Normalization(0.0, 100.0)
    data = SliceDataset([image], norm, size=32, cache_bytes=0)
    assert max(lazy.reads) == 233 * 197
    lazy.reads.clear()
    data[3]
    assert lazy.reads == [233 * 197]


def test_clip_dataset_on_real_4d_fmri(nibabel_example4d):
    image = read_image(nibabel_example4d)
    assert image.has_time
    norm = percentile_normalization([image.array])
    clips = ClipDataset([image], norm, size=32, frames=2, min_foreground=0.0)
    assert len(clips) == image.array.shape[1]  # one clip per slice: 2 frames, 2 frames long
    assert clips[0].shape == (1, 2, 32, 32)
    with pytest.raises(InputError, match="frames"):
        ClipDataset([image], norm, size=32, frames=3)


def test_patch_dataset_crops_native_resolution(mni):
    norm = percentile_normalization([mni.array])
    patches = PatchDataset([mni], norm, size=64)
    torch.manual_seed(0)
    first = patches[10]
    assert first.shape == (1, 64, 64)
    torch.manual_seed(0)
    assert torch.equal(first, patches[10])
    assert patches.pixel_spacing == (1.0, 1.0)


def test_step_sampler_shards_without_overlap_and_is_stateless():
    ranks = [StepSampler(10, batch_size=5, seed=3, rank=r, world_size=2) for r in range(2)]
    epoch0 = [r.indices(0) for r in ranks]
    assert sorted(epoch0[0] + epoch0[1]) == list(range(10))
    fresh = StepSampler(10, batch_size=5, seed=3, rank=1, world_size=2)
    assert fresh.indices(7) == ranks[1].indices(7)
    assert ranks[0].indices(1) != ranks[0].indices(0)
    with pytest.raises(InputError, match="processes"):
        StepSampler(1, 1, 0, rank=0, world_size=2)


def test_augment_flips_and_fills_background(mni):
    norm = percentile_normalization([mni.array])
    batch = SliceDataset([mni], norm, size=64)[80][None].repeat(16, 1, 1, 1)
    torch.manual_seed(0)
    out = augment_batch(batch)
    assert out.shape == batch.shape and out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5
    flipped = augment_batch(batch, flip_probability=1.0, max_rotation_deg=0, max_scale=0, max_shift=0)
    torch.testing.assert_close(flipped, batch.flip(-1), atol=1e-4, rtol=0)
    assert not torch.allclose(out, batch)
    rgb = as_medimage(np.zeros((4, 4, 3)))
    assert rgb.axes == "zyx"  # three dimensions are read as a volume, never guessed as colour
