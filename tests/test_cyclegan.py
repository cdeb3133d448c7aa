"""`cyclegan` on real unpaired MR and CT slices: the ResNet generator, the PatchGAN with instance norm, the
image pool, training through the engine, translation on the input's grid, and the bad-input refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.data.datasets import SliceDataset
from medsynth.data.normalization import percentile_normalization
from medsynth.data.samples import load_sample
from medsynth.models.image_pool import ImagePool
from medsynth.models.patchgan import PatchDiscriminator
from medsynth.models.resnet_generator import ResNetGenerator


@pytest.fixture(scope="module")
def mr():
    """The MNI152 T1 template's central 40 axial slices (domain A)."""
    image = load_sample("mni152")
    return image.with_array(np.asarray(image.array[70:110]))


@pytest.fixture(scope="module")
def ct():
    """The CT slice pydicom ships, in HU (domain B)."""
    return load_sample("ct_slice")


@pytest.fixture(scope="module")
def mr_slices(mr) -> torch.Tensor:
    """Eight normalised 32x32 axial MR slices ``(8, 1, 32, 32)``."""
    dataset = SliceDataset([mr], percentile_normalization([mr.array]), 32)
    return torch.stack([dataset[i] for i in range(0, 40, 5)])


# -- models ------------------------------------------------------------------------------------


def test_resnet_generator_keeps_the_image_size_and_range(mr_slices):
    generator = ResNetGenerator(channels=8, blocks=2)
    out = generator(mr_slices)
    assert out.shape == mr_slices.shape
    assert out.abs().max() <= 1.0
    # Instance norm keeps no statistics: an image translates the same alone, in a batch, in eval mode.
    alone = generator.eval()(mr_slices[:1])
    assert torch.allclose(alone, out[:1], atol=1e-5)
    assert not list(generator.buffers())
    with pytest.raises(ValueError, match="multiple of 4"):
        generator(mr_slices[..., :30, :30])


def test_paper_sized_generator_has_the_published_parameter_count():
    # Zhu et al.'s 256 px generator: 64 channels, 9 blocks, about 11.4 M parameters (one channel in and out here).
    count = sum(p.numel() for p in ResNetGenerator(64, 9).parameters())
    assert 11.3e6 < count < 11.4e6
    assert sum(p.numel() for p in ResNetGenerator(64, 6).parameters()) < count


def test_patch_discriminator_takes_instance_norm_and_keeps_batch_norm_by_default(mr_slices):
    default, instance = PatchDiscriminator(8), PatchDiscriminator(8, norm="instance")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in default.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in instance.modules())
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in instance.modules())
    assert instance(mr_slices).shape == default(mr_slices).shape == (8, 1, 2, 2)  # 70 x 70 patches on 32 px
    with pytest.raises(ValueError, match="'layer' is not one of"):
        PatchDiscriminator(8, norm="layer")


# -- image pool --------------------------------------------------------------------------------


def test_pool_returns_new_images_while_it_fills(mr_slices):
    pool = ImagePool(size=6)
    torch.manual_seed(0)
    assert torch.equal(pool.query(mr_slices[:4]), mr_slices[:4])
    assert len(pool.images) == 4
    out = pool.query(mr_slices[4:])  # 2 fill the pool, then 2 may be swapped
    assert torch.equal(out[:2], mr_slices[4:6]) and len(pool.images) == 6


def test_a_full_pool_swaps_about_half_of_the_images_for_older_ones(mr_slices):
    pool = ImagePool(size=4)
    torch.manual_seed(0)
    pool.query(mr_slices[:4])
    swapped = 0
    for round_ in range(50):
        new = mr_slices[4:] + 0.01 * (round_ + 1)  # distinct images each round
        before = list(pool.images)
        out = pool.query(new)
        swapped += sum(not torch.equal(image, new[k]) for k, image in enumerate(out))
        # Nothing is lost or duplicated: each older and each new image is either returned or kept.
        assert sorted(map(_key, [*before, *new])) == sorted(map(_key, [*out, *pool.images]))
        assert len(pool.images) == 4
    assert 0.35 < swapped / (50 * len(new)) < 0.65


def _key(image: torch.Tensor) -> bytes:
    return image.numpy().tobytes()


def test_pool_of_size_zero_passes_images_through_and_state_round_trips(mr_slices):
    assert ImagePool(0).query(mr_slices) is mr_slices
    pool = ImagePool(3)
    assert pool.state() is None
    pool.query(mr_slices[:3])
    restored = ImagePool(3)
    restored.load(pool.state())
    assert all(torch.equal(a, b) for a, b in zip(restored.images, pool.images))
