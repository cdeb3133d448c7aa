"""Medical images as the item batches that `medsynth.metrics.evaluate` compares.

Each 2D image is one item; each 3D volume is one item (evaluated per volume) unless `slices` makes its
slices the items; the frames of a time series are items. The CLI and the Metrics widget both use this,
so a layer and a file become the same items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsynth.errors import InputError
from medsynth.io.image import MedImage


def image_items(image: MedImage, slices: bool) -> np.ndarray:
    """One grey MedImage as a batch ``(N, H, W)`` or ``(N, D, H, W)``: time frames and (with `slices`) z are items."""
    array = np.asarray(image.array, dtype=np.float32)
    if "t" not in image.axes:
        array = array[None]
    if array.ndim == 4 and slices:
        array = array.reshape(-1, *array.shape[-2:])
    return array


def load_items(paths: Sequence[str], slices: bool, what: str) -> np.ndarray:
    """Read every path and stack all items into one batch; InputError naming the file whose shape differs."""
    from medsynth.io import read

    batches: list[np.ndarray] = []
    first = ""
    for path in paths:
        for image in read(path):
            items = image_items(image, slices)
            if batches and items.shape[1:] != batches[0].shape[1:]:
                raise InputError(
                    f"{path}: {what} items of shape {items.shape[1:]} differ from those of {first} "
                    f"{batches[0].shape[1:]}; resample all {what} images to one size"
                )
            first = first or path
            batches.append(items)
    return np.concatenate(batches)
