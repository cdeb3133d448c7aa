"""Metrics that read their inputs a piece at a time (PSNR, SSIM, SWD), files as lazy `ItemStack` batches,
and distribution metrics on sets of different image sizes; on MNI152 volumes and the ultrasound cine."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import medsynth.io.mapped as mapped_module
import medsynth.metrics.fidelity as fidelity
from medsynth.data.samples import load_sample
from medsynth.io import read_image, write_nifti
from medsynth.metrics import evaluate, swd
from medsynth.metrics.items import ItemStack, image_items, load_items
from medsynth.metrics.resample import Resampled, common_side, resample_images


@pytest.fixture(scope="module")
def volumes() -> tuple[np.ndarray, np.ndarray]:
    """Two 24-slice MNI152 volumes (2, 24, 80, 72) as real, and the same blurred with noise as fake."""
    mni = np.asarray(load_sample("mni152").array, dtype=np.float32)
    real = np.stack([mni[60:84, 60:140, 60:132], mni[100:124, 60:140, 60:132]])
    noise = np.random.default_rng(0).normal(0, 6.0, real.shape)
    fake = (ndimage.gaussian_filter(real, (0, 0, 1.0, 1.0)) + noise).astype(np.float32)
    return real, fake


def _mask(kind: str, real: np.ndarray):
    if kind == "none":
        return None
    brain = real > np.percentile(real, 55)
    return brain[0] if kind == "item" else brain


@pytest.mark.parametrize(
    ("metric", "mask_kind", "mode"),
    [("psnr", "none", None), ("ssim", "none", None), ("ssim", "item", "inside"), ("ssim", "batch", "outside")],
)
@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_items_computed_in_slabs_give_the_whole_items_figures(
    volumes, monkeypatch, metric, mask_kind, mode, spatial_dims
):
    real, fake = volumes
    mask = _mask(mask_kind, real)
    if mask is not None and spatial_dims == 2 and mask_kind == "item":
        mask = mask[0]
    kwargs = {"data_range": (0.0, 100.0), "spatial_dims": spatial_dims}
    if mask is not None:
        kwargs.update(mask=mask, mask_mode=mode)
    compute = getattr(fidelity, metric)
    whole = compute(real, fake, **kwargs)
    # Slabs of 3 rows' worth: SSIM's slabs then give 10 rows of output with 5 rows of halo on each side.
    monkeypatch.setattr(fidelity, "_SLAB_VOXELS", 3 * real.shape[-1] * real.shape[-2] - 1)
    sliced = compute(real, fake, **kwargs)
    assert sliced.shape == whole.shape == real.shape[: real.ndim - spatial_dims]
    np.testing.assert_allclose(sliced, whole, rtol=1e-12)


@pytest.fixture(scope="module")
def files(volumes, tmp_path_factory) -> dict[str, list[Path]]:
    """The volumes as files: real as two uncompressed (memory-mapped) .nii, fake as two .nii.gz."""
    folder = tmp_path_factory.mktemp("files")
    mni = load_sample("mni152")
    real, fake = volumes
    return {
        "real": [write_nifti(mni.with_array(v), folder / f"real{k}.nii") for k, v in enumerate(real)],
        "fake": [write_nifti(mni.with_array(v), folder / f"fake{k}.nii.gz") for k, v in enumerate(fake)],
    }


@pytest.mark.parametrize("slices", [False, True])
def test_files_evaluate_as_their_arrays(files, volumes, slices):
    real, fake = volumes
    stack_real = load_items([str(p) for p in files["real"]], slices, "real")
    stack_fake = load_items([str(p) for p in files["fake"]], slices, "fake")
    arrays = (real.reshape(-1, *real.shape[2:]), fake.reshape(-1, *fake.shape[2:])) if slices else (real, fake)
    assert stack_real.shape == arrays[0].shape
    got = evaluate(stack_real, stack_fake, metrics=["psnr", "ssim", "swd"])
    expected = evaluate(*arrays, metrics=["psnr", "ssim", "swd"])
    for g, e in zip(got, expected):
        assert g.name == e.name and not g.error
        np.testing.assert_allclose(g.values, e.values, rtol=1e-6)


@pytest.mark.parametrize(
    "key", [slice(0, 48), slice(20, 30), (slice(23, 26), slice(5, 9)), 0, -1, 25, (slice(0, 48), 3)]
)
def test_an_item_stack_indexes_like_the_concatenated_float32_array(files, volumes, key):
    real = volumes[0]
    stack = load_items([str(p) for p in files["real"]], True, "real")
    expected = real.reshape(-1, *real.shape[2:]).astype(np.float32)
    np.testing.assert_array_equal(stack[key], expected[key])
    assert stack[key].dtype == np.float32


def test_a_cine_is_items_by_frame_and_volumes_become_images(volumes):
    cine = load_sample("us_cine")
    stack = image_items(cine, slices=False)
    assert stack.shape[0] == cine.array.shape[0] and stack.shape[1:] == cine.array.shape[1:]
    volume_stack = ItemStack([(volumes[0], 1)])
    assert volume_stack.shape == volumes[0].shape and volume_stack.as_images().shape == (48, 80, 72)


def _mapped_resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of `path` (Linux /proc/self/smaps)."""
    total, current = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            current = line.endswith(str(path))
        elif current and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_pages_of_a_mapped_file_are_handed_back_while_it_is_read(tmp_path, monkeypatch):
    mni = load_sample("mni152")
    volume = np.repeat(np.asarray(mni.array, dtype=np.float32), 2, axis=0)  # 378 slices, 69 MB
    path = write_nifti(mni.with_array(volume), tmp_path / "big.nii")
    size_kib = path.stat().st_size // 1024
    monkeypatch.setattr(mapped_module, "RELEASE_BYTES", 4 * 2**20)
    stack = load_items([str(path)], True, "real")
    for start in range(0, len(stack), 16):
        stack[start : start + 16].sum()  # a float32 file's pieces are views: using them reads the pages
    assert _mapped_resident_kib(path) < size_kib / 4  # about one release interval stays mapped, not the file
    monkeypatch.setattr(mapped_module, "RELEASE_BYTES", 2**62)
    kept = load_items([str(path)], True, "real")
    for start in range(0, len(kept), 16):
        kept[start : start + 16].sum()
    assert _mapped_resident_kib(path) > size_kib / 2  # without the release the pages stay (the cause)


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_reading_a_mapped_file_hands_back_the_pages_its_nan_check_touched(tmp_path):
    mni = load_sample("mni152")
    volume = np.repeat(np.asarray(mni.array, dtype=np.float32), 2, axis=0)  # 378 slices, 69 MB
    path = write_nifti(mni.with_array(volume), tmp_path / "big.nii")
    image = read_image(path)
    assert mapped_module.mapping_of(image.array) is not None  # still memory-mapped, not read into memory
    # Every voxel was scanned for NaN, yet the file is not resident: evaluate reads two such files
    # before computing, and would otherwise hold both whole.
    assert _mapped_resident_kib(path) < path.stat().st_size // 1024 / 4
    assert np.array_equal(np.asarray(image.array[100]), volume[100])


# Different image sizes ------------------------------------------------------------------------------


def test_pad_keeps_the_aspect_ratio_with_the_background_and_stretch_does_not():
    plane = np.asarray(load_sample("mni152").array[90], dtype=np.float32)  # 233 x 197
    assert common_side((10, *plane.shape), (5, 64, 64)) == 64
    padded = resample_images(plane[None], 64, "pad", fill=-7.0)[0]
    stretched = resample_images(plane[None], 64, "stretch")[0]
    assert padded.shape == stretched.shape == (64, 64)
    # The 197 px wide image fills 197/233 of the square's width; the sides are background.
    background = np.isclose(padded, -7.0, atol=1e-3)
    columns = np.flatnonzero(~background.all(axis=0))
    assert abs(len(columns) - 64 * 197 / 233) <= 2 and background[:, 0].all()
    assert not np.isclose(stretched, -7.0, atol=1e-3).all(axis=0).any()
    assert abs(padded.mean() - stretched.mean()) > 1.0


def test_resampled_batches_are_read_lazily_and_equal_the_whole(volumes):
    real = volumes[0]
    lazy = Resampled(real, 40, "pad", fill=0.0)
    assert lazy.shape == (48, 40, 40)
    whole = resample_images(real.reshape(-1, *real.shape[-2:]), 40, "pad", fill=0.0)
    np.testing.assert_array_equal(lazy[5:30], whole[5:30])
    np.testing.assert_array_equal(np.asarray(lazy), whole)


def test_temporal_compares_sequences_of_different_frame_sizes():
    cine = np.asarray(load_sample("us_cine").array[:12], dtype=np.float32)
    if cine.ndim == 4:  # colour frames are not read as grey here
        cine = cine.mean(axis=-1)
    small = resample_images(cine, 64, "pad", fill=float(cine.min()))
    frozen = np.repeat(small[:1], len(small), axis=0)
    moving = {r.name: r for r in evaluate(cine, small, metrics=["temporal"])}
    still = {r.name: r for r in evaluate(cine, frozen, metrics=["temporal"])}
    assert moving["temporal_diff_w1"].details["resampled_side"] == 64
    assert moving["temporal_diff_w1"].mean < still["temporal_diff_w1"].mean / 3
    assert swd(small, small)["mean"] < 1e3
