"""Medical images as the item batches that `medsynth.metrics.evaluate` compares, read a piece at a time.

Each 2D image is one item; each 3D volume is one item (evaluated per volume) unless `slices` makes its
slices the items; the frames of a time series are items. The CLI and the Metrics widget both use this,
so a layer and a file become the same items.

The batch is an `ItemStack`: it behaves like a float32 array ``(N, *item)`` for indexing, but holds
only the images as read (a memory-mapped NIfTI file stays on disk) and makes a float32 copy of just
the part that is indexed (a view, for a float32 file). The metrics that stream (PSNR, SSIM, SWD) index
it a chunk of items or a slab of one item at a time, so their memory does not grow with the data; the
pages of a memory-mapped file are handed back to the page cache as it is read (`medsynth.io.mapped`),
so even the mapped file does not accumulate in the process's memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.io.mapped import PageRelease


def leading_runs(
    lead: tuple[int, ...], start: int, stop: int, most: int | None = None
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """``(first item, index)`` of runs of the flat items ``[start, stop)`` (C order) of leading axes `lead`.

    Each index tuple fixes all leading axes but the last and slices the last (at most `most` items),
    so indexing an array with it gives a view ``(m, ...)`` of consecutive items, never a copy.
    """
    last, k = lead[-1], start
    while k < stop:
        outer, j = divmod(k, last)
        end = min(last, j + stop - k, j + (most or last))
        prefix = tuple(int(i) for i in np.unravel_index(outer, lead[:-1])) if len(lead) > 1 else ()
        yield k, (*prefix, slice(j, end))
        k += end - j


def item_pieces(
    leading: tuple[int, ...], spatial: tuple[int, ...], *, budget: int, slab: int, halo: int = 0
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """``(first item, index)`` of the pieces a batch ``(*leading, *spatial)`` is read in, in order.

    Items up to `slab` voxels go in runs of whole items of about `budget` voxels; a larger item goes
    alone, in slabs of rows of its first spatial axis that overlap by `halo` rows on each side, so that
    the valid outputs of a filter of radius `halo` over the slabs tile the item's exactly. A slab gives
    at least ``2 * halo`` rows of output (of about `slab` voxels' worth), so that no row is computed
    more than twice.
    """
    voxels = math.prod(spatial)
    lead = leading or (1,)
    items = math.prod(lead)
    if voxels <= slab:
        yield from leading_runs(lead, 0, items, max(1, budget // voxels))
        return
    rows = spatial[0]
    per_slab = max(1, 2 * halo, slab // (voxels // rows) - 2 * halo)
    for first, index in leading_runs(lead, 0, items, 1):
        for top in range(halo, rows - halo, per_slab):
            yield first, (*index, slice(top - halo, min(rows, top + per_slab + halo)))


class ItemStack:
    """Items of several arrays as one batch ``(N, *item)``; indexing gives float32 arrays of what is indexed.

    Each part is an array whose first `lead` axes index its items (``lead`` 0: the array is one item);
    every part's items have the same shape. Indexing takes an int or a slice (step 1) over the items,
    then optionally indices into the item's axes; ``np.asarray(stack)`` reads everything.
    """

    def __init__(self, parts: Sequence[tuple[Any, int]], names: Sequence[str] | None = None) -> None:
        if not parts:
            raise InputError("no images to evaluate")
        self._parts = [(array if lead else array[None], max(lead, 1)) for array, lead in parts]
        self._counts = [math.prod(a.shape[:lead]) for a, lead in self._parts]
        self._starts = np.cumsum([0, *self._counts])
        self._pages = [PageRelease(array) for array, _ in self._parts]
        self.names = list(names or [])
        self.item_shape = tuple(self._parts[0][0].shape[self._parts[0][1] :])
        self.shape = (int(self._starts[-1]), *self.item_shape)
        self.dtype = np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def as_images(self) -> ItemStack:
        """The same data with every 2D image an item: volumes as their slices, frames as they are."""
        return ItemStack([(a, a.ndim - 2) for a, _ in self._parts], self.names)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0 : len(self)]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], tuple(key[1:])) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            k = int(first) + (len(self) if first < 0 else 0)
            return self[(slice(k, k + 1), *rest)][0]
        start, stop, step = first.indices(len(self))
        if step != 1:
            raise IndexError("an ItemStack is read in runs of consecutive items (slice step 1)")
        pieces = []
        for p, (array, lead) in enumerate(self._parts):
            lo, hi = max(start, self._starts[p]), min(stop, self._starts[p + 1])
            if lo >= hi:
                continue
            runs = leading_runs(array.shape[:lead], lo - self._starts[p], hi - self._starts[p])
            read = [np.asarray(array[(*run, *rest)], dtype=np.float32) for _, run in runs]
            # Pages handed back here are read again from the page cache if a piece that is a view of
            # the map (a float32 file) is used afterwards: memory stays bounded, the values the same.
            self._pages[p].read(sum(piece.nbytes for piece in read))
            pieces += read
        if not pieces:
            return np.empty((0, *self.item_shape), dtype=np.float32)[(slice(None), *rest)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def image_items(image: MedImage, slices: bool) -> ItemStack:
    """One grey MedImage as a batch ``(N, H, W)`` or ``(N, D, H, W)``: time frames and (with `slices`) z are items."""
    return ItemStack([(image.array, _lead(image, slices))], [image.name])


def _lead(image: MedImage, slices: bool) -> int:
    """How many leading axes of `image` index items: time, and z with `slices`."""
    lead = 1 if image.has_time else 0
    return lead + 1 if slices and image.ndim_spatial == 3 else lead


def load_items(paths: Sequence[str], slices: bool, what: str) -> ItemStack:
    """Every image in `paths` as one batch; InputError naming the file whose item shape differs."""
    from medsynth.io import read

    parts: list[tuple[Any, int]] = []
    names: list[str] = []
    first = ""
    for path in paths:
        for image in read(path):
            lead = _lead(image, slices)
            shape = image.array.shape[lead:]
            if parts and shape != parts[0][0].shape[parts[0][1] :]:
                raise InputError(
                    f"{path}: {what} items of shape {shape} differ from those of {first} "
                    f"{parts[0][0].shape[parts[0][1]:]}; resample all {what} images to one size"
                )
            first = first or path
            parts.append((image.array, lead))
            names.append(str(path))
    return ItemStack(parts, names)
