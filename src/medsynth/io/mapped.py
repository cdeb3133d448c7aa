"""Memory-mapped arrays: handing their pages back while a large file is scanned.

A read-only memory map of an uncompressed file costs no memory until its pages are touched, but every
page touched stays counted in the process's resident memory until the map is closed, although the
kernel could read it again from the page cache at any time. Code that reads a large mapped file
through (the NaN check of `medsynth.io.nifti`, the metrics' pieces in `medsynth.metrics.items`)
counts what it read with a `PageRelease` and hands the pages back every `RELEASE_BYTES`, so that its
memory stays near the part in use instead of growing to the file's size.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

RELEASE_BYTES = 64 * 2**20
"""Bytes read from a mapped array before its pages are handed back."""


def mapping_of(array: Any) -> mmap.mmap | None:
    """The `mmap` under a (view of a) read-only memory-mapped array, else None.

    A writable map is left out: handing back the pages of a copy-on-write map (numpy's mode ``"c"``)
    would drop the changes made to it.
    """
    holder, base = None, array
    while isinstance(base, np.ndarray):
        holder, base = base, base.base
    return base if isinstance(base, mmap.mmap) and not holder.flags.writeable else None


class PageRelease:
    """Counts the bytes read from `array` and hands its mapped pages back every `every` bytes.

    Does nothing for an array that is not memory-mapped, or where the system has no
    ``MADV_DONTNEED``. `every` defaults to `RELEASE_BYTES` as it is when the counter is made.
    """

    def __init__(self, array: Any, every: int | None = None) -> None:
        self._mapping = mapping_of(array) if hasattr(mmap, "MADV_DONTNEED") else None
        self._every = RELEASE_BYTES if every is None else every
        self._read = 0

    def read(self, nbytes: int) -> None:
        """Count `nbytes` more read (copied out of the map or scanned); release when `every` is reached."""
        if self._mapping is None:
            return
        self._read += nbytes
        if self._read >= self._every:
            self.release()

    def release(self) -> None:
        """Hand every touched page back now; a later read maps it again from the page cache."""
        if self._mapping is not None and not self._mapping.closed:
            self._mapping.madvise(mmap.MADV_DONTNEED)
        self._read = 0
