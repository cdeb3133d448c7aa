"""Training data sent to a child process without pickling large arrays: memory maps reopened, big arrays shared.

`share(data, shared)` replaces, in MedImages, ``(image, target)`` pairs and plain arrays, each numpy
array that would be expensive to pickle by a small handle, and `reopen` turns the handles back into
arrays in the child:

- an `np.memmap`, or a numpy view of one (a NIfTI read by `medsynth.io`, a layer holding it), becomes
  a `MappedArray`: the file, the byte range and the view's layout. The child maps the same bytes of
  the same file read-only; nothing is copied and the pages are shared through the page cache.
- another numpy array of at least `SHARED_MIN_BYTES` is copied once into a
  `multiprocessing.shared_memory.SharedMemory` block and becomes a `SharedArray`; the child views the
  block read-only. The caller owns the blocks (`shared`) and must close and unlink them when the child
  has ended (`release`).
- smaller arrays, dask arrays (their task graph) and anything else are left as they are.
"""

from __future__ import annotations

import contextlib
import copy
import mmap
import os
import shutil
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.array_utils import byte_bounds
from numpy.lib.stride_tricks import as_strided

from medsynth.data.domains import TwoDomains
from medsynth.errors import InputError
from medsynth.io.image import MedImage

SHARED_MIN_BYTES = 64 * 2**20
"""In-memory arrays at least this large go through shared memory instead of being pickled."""
SHARED_MEMORY_DIR = Path("/dev/shm")
"""Where POSIX shared memory lives on Linux (a size-limited tmpfs, small in containers): writing a block
larger than its free space kills the process with SIGBUS. Other systems have no such folder or limit."""


@dataclass(frozen=True)
class MappedArray:
    """A read-only view of bytes ``[offset, offset + nbytes)`` of a file: the first element at byte `start`."""

    filename: str
    offset: int
    nbytes: int
    start: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype
    file_id: tuple[int, int]
    """(device, inode) of the file when it was mapped: a file replaced since is refused, not misread."""

    def open(self) -> np.memmap:
        """The view, as an `np.memmap` of `filename` (read-only)."""
        stat = os.stat(self.filename)
        if (stat.st_dev, stat.st_ino) != self.file_id or stat.st_size < self.offset + self.nbytes:
            raise InputError(
                f"{self.filename}: the file was replaced or shortened after it was loaded, so the training "
                "process cannot map the loaded data; load the file again and restart training"
            )
        region = np.memmap(self.filename, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.nbytes,))
        first = region[self.start : self.start + self.dtype.itemsize].view(self.dtype)
        # the strides come from a view that lay inside this byte range (checked in `_mapped`)
        return as_strided(first, self.shape, self.strides, subok=True, writeable=False)


@dataclass(frozen=True)
class SharedArray:
    """A C-ordered array in the shared memory block `name`."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def open(self) -> np.ndarray:
        """The array, read-only, viewing the block; the block stays mapped while the array lives."""
        block = SharedMemory(name=self.name)
        array = np.ndarray(self.shape, self.dtype, buffer=block.buf)
        array.flags.writeable = False
        _ATTACHED.append(block)  # closing the block while the array views it would fail
        return array


_ATTACHED: list[SharedMemory] = []
"""The blocks this (child) process views; they live as long as the process."""


def share(data: Any, shared: list[SharedMemory]) -> Any:
    """`data` with its numpy arrays replaced by handles (see the module docstring); new blocks go to `shared`.

    `data` is a MedImage, an array, a list or tuple of them (nested), or `TwoDomains` of such lists.
    MedImages are shallow copies with the handle as `array`; the caller's objects are not changed.
    """
    if isinstance(data, TwoDomains):
        return TwoDomains(a=share(list(data.a), shared), b=share(list(data.b), shared))
    if isinstance(data, MedImage):
        handle = share(data.array, shared)
        if handle is data.array:
            return data
        image = copy.copy(data)
        image.array = handle  # not `with_array`: a handle is no array, and MedImage validates arrays
        return image
    if isinstance(data, (list, tuple)) and not hasattr(data, "_fields"):
        return type(data)(share(item, shared) for item in data)
    if type(data) not in (np.ndarray, np.memmap) or data.size == 0:
        return data
    mapped = _mapped(data)
    if mapped is not None:
        return mapped
    if data.nbytes >= SHARED_MIN_BYTES and _fits_shared_memory(data.nbytes):
        return _shared(data, shared)
    return data


def reopen(data: Any) -> Any:
    """The inverse of `share`, in the process that receives its result."""
    if isinstance(data, (MappedArray, SharedArray)):
        return data.open()
    if isinstance(data, TwoDomains):
        return TwoDomains(a=reopen(data.a), b=reopen(data.b))
    if isinstance(data, MedImage):
        image = copy.copy(data)
        image.array = reopen(data.array)
        return image
    if isinstance(data, (list, tuple)) and not hasattr(data, "_fields"):
        return type(data)(reopen(item) for item in data)
    return data


def release(shared: list[SharedMemory]) -> None:
    """Close and unlink the blocks `share` made; the arrays viewing them in the caller must be gone."""
    while shared:
        block = shared.pop()
        block.close()
        with contextlib.suppress(FileNotFoundError):  # already gone: the next blocks must still be unlinked
            block.unlink()


def _mapped(array: np.ndarray) -> MappedArray | None:
    """A handle of `array` if it views a file's memory map, else None."""
    root = _root_memmap(array)
    if root is None or not root.filename:
        return None
    low, high = byte_bounds(array)
    root_low, root_high = byte_bounds(root)
    if not root_low <= low <= high <= root_high:
        return None
    stat = os.stat(root.filename)
    return MappedArray(
        filename=str(root.filename),
        offset=root.offset + (low - root_low),
        nbytes=high - low,
        start=array.__array_interface__["data"][0] - low,
        shape=array.shape,
        strides=array.strides,
        dtype=array.dtype,
        file_id=(stat.st_dev, stat.st_ino),
    )


def _root_memmap(array: np.ndarray) -> np.memmap | None:
    """The memmap that owns the mapping `array` views: its element 0 is the file's byte ``offset``."""
    base: Any = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap):
            return base
        base = base.base
    return None


def _fits_shared_memory(nbytes: int) -> bool:
    return not SHARED_MEMORY_DIR.is_dir() or nbytes < shutil.disk_usage(SHARED_MEMORY_DIR).free


def _shared(array: np.ndarray, shared: list[SharedMemory]) -> SharedArray:
    block = SharedMemory(create=True, size=array.nbytes)
    shared.append(block)
    np.copyto(np.ndarray(array.shape, array.dtype, buffer=block.buf), array)
    return SharedArray(block.name, array.shape, array.dtype)
