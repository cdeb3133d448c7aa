"""Writing a NIfTI file larger than memory, block by block.

`nifti_stream` writes one NIfTI file whose data arrives in blocks (a chunk of generated images, some
frames of one sequence) and is never held whole. The header is `write_nifti`'s for the same image, so
the file reads back exactly as if the whole image had been written at once; a dimension above
NIfTI-1's 32767 (more than 32767 generated images) makes it a NIfTI-2 file. The blocks go to an
unnamed temporary file at their place in the data; when the last one is in, the file is moved into
place atomically (`medsynth.atomic`), ``.nii.gz`` compressed on the way (gzip level 1, as nibabel
writes). Until then the destination does not exist, and an error leaves nothing behind.

Outputs made of many files (a DICOM file per generated image) are staged whole by
`medsynth.atomic.staged_folder`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.atomic import atomic_path
from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.io.nifti import is_nifti_path, write_nifti

NIFTI1_MAX_DIM = 32767
"""NIfTI-1 stores dimensions as int16; NIfTI-2 as int64."""
PROBE_SIZES = (2, 3, 5, 7, 11)
_COPY_BYTES = 16 * 2**20


class NiftiBlocks:
    """The data of a `nifti_stream` file: `write` puts a block of the image's array at its place.

    The image's array has the full shape `shape` (the axes of the template, ``t z y x`` order); a block
    covers whole ``(y, x)`` planes and any ranges of the axes before them.
    """

    def __init__(self, file: Any, offset: int, shape: tuple[int, ...], dtype: np.dtype, path: Path) -> None:
        self._fd, self._offset, self.shape, self._dtype, self._path = file.fileno(), offset, shape, dtype, path
        self._plane_bytes = int(np.prod(shape[-2:])) * dtype.itemsize
        self._planes_written = 0

    @property
    def planes(self) -> int:
        """``(y, x)`` planes in the whole image."""
        return int(np.prod(self.shape[:-2]))

    def write(self, start: tuple[int, ...], block: np.ndarray) -> None:
        """Write `block` (the array's ndim, whole ``(y, x)`` planes) with its first plane at index `start`.

        InputError for non-finite values (NIfTI readers would take NaN for data) or a block that does
        not fit the image.
        """
        block = np.asarray(block)
        lead = self.shape[:-2]
        if block.ndim != len(self.shape) or block.shape[-2:] != self.shape[-2:] or len(start) != len(lead):
            raise ValueError(f"a block of shape {block.shape} at {start} does not fit an image of shape {self.shape}")
        if any(s < 0 or s + n > m for s, n, m in zip(start, block.shape[:-2], lead)):
            raise ValueError(f"a block of shape {block.shape} at {start} reaches outside the image {self.shape}")
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise InputError(f"{self._path}: the data to write holds NaN or infinite values; nothing was written")
        data = np.ascontiguousarray(block, dtype=self._dtype)
        positions = np.indices(block.shape[:-2]).reshape(len(lead), -1) + np.reshape(start, (-1, 1))
        indices = np.ravel_multi_index(tuple(positions), lead)  # the planes' places in the file, in block order
        if np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices))):  # one run: one write
            self._pwrite(data, int(indices[0]))
        else:
            for plane, index in zip(data.reshape(-1, *self.shape[-2:]), indices):
                self._pwrite(plane, int(index))
        self._planes_written += len(indices)

    def _pwrite(self, data: np.ndarray, plane: int) -> None:
        view = memoryview(data).cast("B")
        position = self._offset + plane * self._plane_bytes
        while view:
            written = os.pwrite(self._fd, view, position)
            view, position = view[written:], position + written

    def check_complete(self) -> None:
        if self._planes_written < self.planes:
            raise ValueError(f"{self._path}: {self._planes_written} of {self.planes} planes were written")


@contextlib.contextmanager
def nifti_stream(path: str | os.PathLike[str], like: MedImage, shape: tuple[int, ...]) -> Iterator[NiftiBlocks]:
    """Write a NIfTI file block by block; see the module docstring.

    Args:
        path: a new ``.nii`` or ``.nii.gz`` file.
        like: an image with the axes, geometry, units, provenance and dtype of the one to write (its
            array may be any small one, e.g. the first chunk).
        shape: the array shape of the whole image (in `like`'s axes).

    Yields:
        `NiftiBlocks`; every plane must be written before the ``with`` block ends.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise InputError(f"{path}: a NIfTI file name must end with .nii or .nii.gz; rename the output.")
    header = _header(like, tuple(shape))
    head = io.BytesIO()
    header.write_to(head)
    offset = header.get_data_offset()
    head_bytes = head.getvalue().ljust(offset, b"\0")
    dtype = header.get_data_dtype()
    with atomic_path(path) as target:
        if path.name.lower().endswith(".gz"):
            with tempfile.TemporaryFile(dir=path.parent) as raw:
                blocks = NiftiBlocks(raw, 0, shape, dtype, path)
                yield blocks
                blocks.check_complete()
                with open(target, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1, mtime=0) as gz:
                    gz.write(head_bytes)
                    raw.seek(0)
                    shutil.copyfileobj(raw, gz, _COPY_BYTES)
        else:
            with open(target, "r+b") as f:
                f.write(head_bytes)
                blocks = NiftiBlocks(f, offset, shape, dtype, path)
                yield blocks
                blocks.check_complete()


def nifti_bytes(like: MedImage, shape: tuple[int, ...]) -> int:
    """About the size of the uncompressed file `nifti_stream` writes: the data, and 64 KiB for the header."""
    return int(np.prod(shape)) * like.array.dtype.itemsize + 2**16


def _header(like: MedImage, shape: tuple[int, ...]) -> Any:
    """`write_nifti`'s header for `like` with the data shape of an image of array shape `shape`."""
    import nibabel as nib

    # write_nifti is the one place that decides what a NIfTI header holds (it may add singleton axes,
    # e.g. z for 2D+t). A small probe image with distinct sizes shows which file dimension is which
    # array axis; the data bytes are the array's in C order either way (the file stores x fastest).
    sizes = PROBE_SIZES[: len(shape)]
    probe = like.with_array(np.zeros(sizes, dtype=like.array.dtype))
    with tempfile.TemporaryDirectory() as folder:
        header = nib.load(write_nifti(probe, Path(folder) / "probe.nii")).header.copy()
    size_of = dict(zip(sizes, shape))
    file_shape = tuple(size_of.get(int(n), 1) for n in header.get_data_shape())
    if max(file_shape) > NIFTI1_MAX_DIM:
        header = nib.Nifti2Header.from_header(header, check=False)
        header["sizeof_hdr"] = nib.Nifti2Header.sizeof_hdr
    header.set_data_shape(file_shape)
    header.set_data_offset(0)  # recomputed from the header and its extensions when written
    return header

