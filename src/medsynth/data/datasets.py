"""Datasets of training items read lazily from `MedImage` volumes or in-memory arrays.

Four kinds of items, all normalised to [-1, 1] (see `medsynth.data.normalization`):

- `SliceDataset`: 2D slices of 3D volumes along a chosen axis (and every frame of time series),
  padded to a square and resized to the training size: ``(1, S, S)``.
- `ClipDataset`: 2D+t clips of consecutive frames at one slice position of 4D (or ``tyx``) data:
  ``(1, T, S, S)``.
- `PatchDataset`: random ``(1, P, P)`` patches of 2D slices at native resolution.
- `LesionCropDataset`: the one ``(2, h, w)`` lesion crop of an image and its lesion mask, at native
  resolution and normalised by the crop's own minimum and maximum (SinGAN).

Arrays are indexed one slice or clip at a time (numpy, memmap and dask arrays alike), never copied
whole. Nearly empty items are skipped: an item is kept when at least `min_foreground` of its pixels
lie above the lowest 5 % of the normalised range (the background of MR and CT after clipping), so the
air above the head does not dominate the training set. Prepared items are kept in memory while they
fit in `cache_bytes`; the rest are read again on each use.

`StepSampler` shards and shuffles item indices per rank so that the batch of any step can be
recomputed from the step number alone, which is what makes resuming exact.
"""

from __future__ import annotations

import hashlib
import itertools
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.geometry import MIN_CROP_SIDE, Box, label_box
from medsynth.data.normalization import Normalization, minmax_normalization
from medsynth.errors import InputError
from medsynth.io.image import MedImage

CACHE_BYTES = 256 * 2**20
FOREGROUND_LEVEL = -0.9
"""Normalised value above which a pixel counts as foreground (5 % of the [-1, 1] range)."""

_AXES_BY_NDIM = {2: "yx", 3: "zyx", 4: "tzyx"}


def as_medimage(data: MedImage | Any, name: str = "array") -> MedImage:
    """`data` itself when it is a `MedImage`; else an array (numpy, memmap, dask) with unit spacing.

    Arrays are taken as ``yx``, ``zyx`` or ``tzyx`` by their number of dimensions.
    """
    if isinstance(data, MedImage):
        return data
    ndim = len(getattr(data, "shape", ()))
    if ndim not in _AXES_BY_NDIM:
        raise InputError(
            f"training data {name!r} has {ndim} dimensions; give 2D (y, x), 3D (z, y, x) or 4D (t, z, y, x) "
            "grey-level arrays"
        )
    axes = _AXES_BY_NDIM[ndim]
    return MedImage(array=data, axes=axes, spacing=(1.0,) * len(axes.replace("t", "")), name=name)


def target_on_grid(image: MedImage, target: MedImage | Any, name: str) -> MedImage:
    """`target` (a label map or mask) as a MedImage on `image`'s grid; InputError naming the mismatch otherwise."""
    given_as_image = isinstance(target, MedImage)
    target = as_medimage(target, name=name)
    if tuple(target.array.shape) != tuple(image.array.shape):
        raise InputError(
            f"{name} {target.name!r} has shape {tuple(target.array.shape)} but image {image.name!r} has shape "
            f"{tuple(image.array.shape)}; it must lie on its image's grid: resample it onto the image "
            "(or paint it on a Labels layer of that image)"
        )
    if given_as_image and not np.allclose(target.spacing, image.spacing, rtol=1e-3):
        raise InputError(
            f"{name} {target.name!r} has spacing {target.spacing} but image {image.name!r} has {image.spacing}; "
            "it must lie on its image's grid: resample it onto the image"
        )
    return target


def pad_square(x: torch.Tensor, fill: float) -> torch.Tensor:
    """``(..., H, W)`` padded with `fill` to a centred square of side ``max(H, W)``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top), value=fill)


def fit_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad normalised ``(C, H, W)`` to a centred square with -1 (background), resize to ``(C, size, size)``.

    Padding first keeps the aspect ratio. The antialiased bilinear filter has non-negative weights,
    so values stay in [-1, 1] up to rounding, which the final clamp removes.
    """
    x = pad_square(x, -1.0)
    if x.shape[-1] == size:
        return x
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp_(-1.0, 1.0)


def plane_indices(image: MedImage, slice_axis: int) -> Iterator[tuple[Any, ...]]:
    """Index tuples of `image`'s 2D planes: along spatial axis `slice_axis` of a volume, in every frame."""
    _check_slice_axis(image, slice_axis)
    ranges: list[Any] = []
    for axis, name in enumerate(image.axes):
        if name == "t" or (image.ndim_spatial == 3 and name == image.spatial_axes[slice_axis]):
            ranges.append(range(image.array.shape[axis]))
        else:
            ranges.append([slice(None)])
    return itertools.product(*ranges)


def foreground_fraction(normalised: np.ndarray) -> float:
    """Fraction of values above `FOREGROUND_LEVEL` in an array normalised to [-1, 1]."""
    return float(np.count_nonzero(normalised > FOREGROUND_LEVEL)) / max(1, normalised.size)


class _LazyDataset:
    """Items are (image number, index tuple into its array); subclasses say how to enumerate and prepare them."""

    def __init__(
        self,
        images: Sequence[MedImage | Any],
        normalization: Normalization,
        *,
        slice_axis: int = 0,
        min_foreground: float = 0.05,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        if len(images) == 0:
            raise InputError("no training data given: pass at least one image")
        self.images = [as_medimage(image, name=f"image {k}") for k, image in enumerate(images)]
        self.normalization = normalization
        self.slice_axis = slice_axis
        self.items: list[tuple[int, tuple[Any, ...]]] = []
        self._cache: dict[int, torch.Tensor] = {}
        digest = hashlib.sha256()
        budget = cache_bytes
        for k, image in enumerate(self.images):
            check_grey(image)
            for index in self._enumerate(image):
                raw = np.asarray(image.array[index])
                normalised = normalization.apply(raw)
                if foreground_fraction(normalised) < min_foreground:
                    continue
                digest.update(f"{raw.shape}{raw.dtype}".encode())
                digest.update(np.ascontiguousarray(raw).tobytes())
                self.items.append((k, index))
                prepared = self._prepare(normalised)
                if prepared.numel() * prepared.element_size() <= budget:
                    self._cache[len(self.items) - 1] = prepared
                    budget -= prepared.numel() * prepared.element_size()
        if not self.items:
            raise InputError(
                f"none of the {len(self.images)} training image(s) has an item with at least "
                f"{min_foreground:.0%} foreground after normalisation to [{normalization.low:g}, "
                f"{normalization.high:g}]; check the slice axis, the window, or lower min_foreground"
            )
        self.content_hash = digest.hexdigest()

    def _enumerate(self, image: MedImage) -> Iterator[tuple[Any, ...]]:
        raise NotImplementedError

    def _prepare(self, normalised: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        cached = self._cache.get(i)
        if cached is not None:
            return cached
        k, index = self.items[i]
        return self._prepare(self.normalization.apply(np.asarray(self.images[k].array[index])))

    def _plane_spacing(self, image: MedImage) -> tuple[float, float]:
        """Spacing (row, column) in mm of the 2D planes taken from `image`."""
        spacing = list(image.spacing)
        if len(spacing) == 3:
            del spacing[self.slice_axis]
        return float(spacing[0]), float(spacing[1])

    def plane_shape(self, image: MedImage) -> tuple[int, int]:
        """(rows, columns) of the 2D planes taken from `image`, at its own resolution."""
        shape = [image.array.shape[image.axes.index(a)] for a in image.spatial_axes]
        if len(shape) == 3:
            del shape[self.slice_axis]
        return int(shape[0]), int(shape[1])

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """In-plane spacing (mm) of an item's pixels, the median over the images."""
        used = sorted({k for k, _ in self.items})
        rows, cols = zip(*(self._item_spacing(self.images[k]) for k in used))
        return float(statistics.median(rows)), float(statistics.median(cols))

    def _item_spacing(self, image: MedImage) -> tuple[float, float]:
        return self._plane_spacing(image)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description of the training data, stored in checkpoints."""
        images = [
            {
                "name": image.name,
                "shape": [int(n) for n in image.array.shape],
                "axes": image.axes,
                "spacing": list(image.spacing),
                "time_spacing": image.time_spacing,
                "modality": image.modality,
                "units": image.units,
            }
            for image in self.images
        ]
        modalities = {image.modality for image in self.images}
        units = {image.units for image in self.images}
        return {
            "images": images,
            "items": len(self),
            "item_shape": list(self[0].shape),
            "slice_axis": self.slice_axis,
            "pixel_spacing": list(self.pixel_spacing),
            "modality": modalities.pop() if len(modalities) == 1 else "OT",
            "units": units.pop() if len(units) == 1 else "",
            "content_sha256": self.content_hash,
        }


class SliceDataset(_LazyDataset):
    """2D slices ``(1, size, size)`` of every image: along `slice_axis` of 3D volumes, and of every frame."""

    def __init__(self, images: Sequence[MedImage | Any], normalization: Normalization, size: int, **options: Any):
        self.size = size
        super().__init__(images, normalization, **options)

    def _enumerate(self, image: MedImage) -> Iterator[tuple[Any, ...]]:
        return plane_indices(image, self.slice_axis)

    def _prepare(self, normalised: np.ndarray) -> torch.Tensor:
        return fit_square(torch.from_numpy(normalised)[None], self.size)

    def _item_spacing(self, image: MedImage) -> tuple[float, float]:
        scale = max(self.plane_shape(image)) / self.size
        row, col = self._plane_spacing(image)
        return row * scale, col * scale


class ClipDataset(_LazyDataset):
    """Clips ``(1, frames, size, size)`` of consecutive frames of time series, half-overlapping."""

    def __init__(
        self,
        images: Sequence[MedImage | Any],
        normalization: Normalization,
        size: int,
        frames: int,
        **options: Any,
    ):
        self.size = size
        self.frames = frames
        super().__init__(images, normalization, **options)

    def _enumerate(self, image: MedImage) -> Iterator[tuple[Any, ...]]:
        if not image.has_time:
            raise InputError(
                f"image {image.name!r} (axes {image.axes!r}) has no time axis; sequence recipes need 2D+t "
                "or 3D+t data (axes 'tyx' or 'tzyx')"
            )
        _check_slice_axis(image, self.slice_axis)
        n_frames = image.array.shape[0]
        if n_frames < self.frames:
            raise InputError(
                f"image {image.name!r} has {n_frames} frames, fewer than the {self.frames} a clip needs; "
                "lower the recipe's frames setting"
            )
        starts = range(0, n_frames - self.frames + 1, max(1, self.frames // 2))
        positions: Sequence[Any] = [slice(None)]
        if image.ndim_spatial == 3:
            positions = range(image.array.shape[1 + self.slice_axis])
        for start, position in itertools.product(starts, positions):
            index: list[Any] = [slice(start, start + self.frames), slice(None), slice(None), slice(None)]
            if image.ndim_spatial == 3:
                index[1 + self.slice_axis] = position
            yield tuple(index[: len(image.axes)])

    def _prepare(self, normalised: np.ndarray) -> torch.Tensor:
        return fit_square(torch.from_numpy(normalised), self.size)[None]

    def _item_spacing(self, image: MedImage) -> tuple[float, float]:
        scale = max(self.plane_shape(image)) / self.size
        row, col = self._plane_spacing(image)
        return row * scale, col * scale


class PatchDataset(SliceDataset):
    """Random patches ``(1, size, size)`` of 2D slices at native resolution.

    Slices smaller than a patch are padded with the background value. The patch position comes from
    torch's global random generator, which the trainer seeds per step.
    """

    def _prepare(self, normalised: np.ndarray) -> torch.Tensor:
        plane = torch.from_numpy(normalised)[None]
        h, w = plane.shape[-2:]
        pad_h, pad_w = max(0, self.size - h), max(0, self.size - w)
        if pad_h or pad_w:
            plane = F.pad(plane, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=-1.0)
        return plane

    def __getitem__(self, i: int) -> torch.Tensor:
        plane = super().__getitem__(i)
        h, w = plane.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, ()))
        left = int(torch.randint(0, w - self.size + 1, ()))
        return plane[:, top : top + self.size, left : left + self.size]

    def _item_spacing(self, image: MedImage) -> tuple[float, float]:
        return self._plane_spacing(image)


class LesionCropDataset:
    """One item ``(2, h, w)``: a lesion crop normalised to [-1, 1] (channel 0) and its mask as -1/1 (channel 1).

    The crop is the bounding box of the mask's non-zero pixels grown by `margin` pixels and clipped to
    the plane; ``margin=-1`` keeps the whole plane (an image that is already a crop). Of a volume, the
    plane is the slice along `slice_axis` with the most mask pixels. The crop keeps its native size
    and aspect ratio: no resizing, no random crops. Without a given `normalization` (a resumed run
    passes its checkpoint's), the crop's own minimum and maximum map to [-1, 1], so nothing is clipped.
    """

    def __init__(
        self,
        image: MedImage | Any,
        mask: MedImage | Any,
        normalization: Normalization | None = None,
        *,
        slice_axis: int = 0,
        margin: int = -1,
    ) -> None:
        self.image = as_medimage(image, name="lesion image")
        check_grey(self.image)
        if self.image.has_time:
            raise InputError(
                f"image {self.image.name!r} (axes {self.image.axes!r}) has a time axis; a lesion crop comes from a "
                "2D image or one slice of a volume"
            )
        target = target_on_grid(self.image, mask, "lesion mask")
        _check_slice_axis(self.image, slice_axis)
        self.slice_axis = slice_axis
        lesion = np.asarray(target.array) != 0
        if not lesion.any():
            raise InputError(
                f"the lesion mask {target.name!r} is empty; give a mask (label map) with the lesion's pixels non-zero"
            )
        self.slice_index, lesion = self._lesion_plane(lesion)
        plane = np.asarray(self._plane(self.image.array), dtype=np.float32)  # only this slice is read
        self.box: Box = (0, 0, *plane.shape) if margin < 0 else label_box(lesion.astype(np.uint8), 1, margin)
        y0, x0, y1, x1 = self.box
        values, lesion = plane[y0:y1, x0:x1], lesion[y0:y1, x0:x1]
        if min(values.shape) < MIN_CROP_SIDE:
            raise InputError(
                f"the lesion crop is {values.shape[0]}x{values.shape[1]} px; it must be at least "
                f"{MIN_CROP_SIDE}x{MIN_CROP_SIDE}: select a larger crop or a larger margin"
            )
        self.normalization = normalization if normalization is not None else minmax_normalization(values)
        self.item = torch.from_numpy(
            np.stack([self.normalization.apply(values), np.where(lesion, 1.0, -1.0).astype(np.float32)])
        )
        digest = hashlib.sha256(np.ascontiguousarray(values).tobytes())
        digest.update(np.packbits(lesion).tobytes())
        self.content_hash = digest.hexdigest()

    def _lesion_plane(self, lesion: np.ndarray) -> tuple[int | None, np.ndarray]:
        """The slice index (None for 2D) and ``(H, W)`` mask of the plane with the most lesion pixels."""
        if self.image.ndim_spatial == 2:
            return None, lesion
        axis = self._slice_array_axis()
        counts = lesion.sum(axis=tuple(a for a in range(lesion.ndim) if a != axis))
        index = int(np.argmax(counts))
        return index, np.take(lesion, index, axis=axis)

    def _slice_array_axis(self) -> int:
        return self.image.axes.index(self.image.spatial_axes[self.slice_axis])

    def _plane(self, array: Any) -> Any:
        """The lesion's plane of `array` (numpy, memmap or dask) by indexing, so a lazy array reads one slice."""
        if self.slice_index is None:
            return array
        index: list[Any] = [slice(None)] * array.ndim
        index[self._slice_array_axis()] = self.slice_index
        return array[tuple(index)]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> torch.Tensor:
        if i != 0:
            raise IndexError(f"a lesion crop dataset has one item, not item {i}")
        return self.item

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """Spacing (row, column) in mm of the crop's pixels."""
        spacing = list(self.image.spacing)
        if self.slice_index is not None:
            del spacing[self.slice_axis]
        return float(spacing[0]), float(spacing[1])

    def describe(self) -> dict[str, Any]:
        """JSON-ready description of the crop, stored in checkpoints."""
        return {
            "images": [
                {
                    "name": self.image.name,
                    "shape": [int(n) for n in self.image.array.shape],
                    "axes": self.image.axes,
                    "spacing": list(self.image.spacing),
                }
            ],
            "items": 1,
            "item_shape": list(self.item.shape),
            "slice_axis": self.slice_axis,
            "slice_index": self.slice_index,
            "box": list(self.box),
            "pixel_spacing": list(self.pixel_spacing),
            "modality": self.image.modality,
            "units": self.image.units,
            "content_sha256": self.content_hash,
        }


class StepSampler:
    """The item indices of each step's batch for one rank, from the step number alone.

    Every epoch is a permutation of all items seeded by (seed, epoch), the same on every rank; rank
    `r` of `world` takes every `world`-th entry starting at `r` (like `DistributedSampler`), and the
    batches of consecutive steps run through that shard, crossing epoch boundaries.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n_items < world_size:
            raise InputError(
                f"{n_items} training item(s) cannot be shared among {world_size} processes; "
                "add data or use fewer processes"
            )
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shard_size = n_items // world_size
        self._epoch, self._shard = -1, np.empty(0, dtype=np.int64)

    def indices(self, step: int) -> list[int]:
        """Indices (into the dataset) of the batch of `step` on this rank."""
        out = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self.shard_size)
            out.append(int(self._shard_of(epoch)[offset]))
        return out

    def _shard_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
            self._epoch, self._shard = epoch, order[self.rank :: self.world_size][: self.shard_size]
        return self._shard


def check_grey(image: MedImage) -> None:
    if image.is_rgb:
        raise InputError(
            f"image {image.name!r} is colour (axes {image.axes!r}); the recipes train on one channel: "
            "convert it to grey levels first"
        )


def _check_slice_axis(image: MedImage, slice_axis: int) -> None:
    if image.ndim_spatial == 3 and slice_axis not in (0, 1, 2):
        raise InputError(f"slice axis {slice_axis} is not 0 (z, axial), 1 (y, coronal) or 2 (x, sagittal)")
