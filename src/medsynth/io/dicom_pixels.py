"""Decoding DICOM pixel data with pydicom, one frame at a time, with errors that name the file and the fix.

- Before decoding, the transfer syntax must have an installed decoder (`require_decoder`); when none is
  installed, or every installed one fails on the file, `MissingDecoderError` names the package to install.
- Frames are read straight from the file, so a large multi-frame file is never held twice. pydicom
  cannot read some valid files that way (deflated transfer syntax, a data set encoded otherwise than
  its transfer syntax says, no file meta header): those are read whole and decoded from the data set.
- pydicom logs every failing decoder plugin with a traceback; those logs are held back while decoding
  (`medsynth.io.library_logs`), since their text is part of the one error raised.
- Native pixel data longer than Rows x Columns x frames is decoded as the header says, with an
  `InputWarning` naming the file (`warn_excess_pixel_data`).
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from medsynth.errors import InputError, InputWarning, MissingDecoderError, UnreadableFileError
from medsynth.io.library_logs import held_back

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

_PYLIBJPEG_PACKAGES = (
    ("JPEG 2000", "pylibjpeg pylibjpeg-openjpeg"),
    ("JPEG-LS", "pylibjpeg pylibjpeg-libjpeg"),
    ("JPEG", "pylibjpeg pylibjpeg-libjpeg"),
    ("RLE", "pylibjpeg pylibjpeg-rle"),
)
_PLUGIN_PACKAGES = {"gdcm": "python-gdcm", "pillow": "pillow"}
"""The pip package of each pydicom decoder plugin (pylibjpeg's depend on the compression)."""
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _transfer_syntax(ds: Dataset) -> UID:
    """The data set's transfer syntax; implicit VR little endian (DICOM's default) when no meta header says."""
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    return UID(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) if meta is not None else ImplicitVRLittleEndian)


def set_transfer_syntax_from_encoding(ds: Dataset) -> None:
    """Give a data set read without file meta header the transfer syntax of the encoding pydicom found.

    Such files are uncompressed (compressed pixel data needs a meta header to say how), so the
    encoding (implicit or explicit VR, byte order) names the transfer syntax.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def require_decoder(ds: Dataset, path: Path) -> None:
    """Raise `MissingDecoderError` when the pixel data's compression has no installed decoder."""
    from pydicom.pixels import get_decoder

    uid = _transfer_syntax(ds)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise MissingDecoderError(
            f"{path}: pixel data uses transfer syntax {uid.name} ({uid}), which pydicom cannot decode. "
            "Convert the file to an uncompressed transfer syntax (e.g. `gdcmconv --raw` or `dcmdjpeg`)."
        ) from None
    if not decoder.is_available:
        detail = "; ".join(decoder.missing_dependencies)
        raise MissingDecoderError(
            f"{path}: pixel data is compressed as {uid.name} ({uid}) and no decoder for it is installed"
            f"{f' ({detail})' if detail else ''}. Install one with {_install_hint(uid, decoder.missing_dependencies)}."
        )


def iter_frames(path: Path, *, as_rgb: bool, count: int) -> Iterator[np.ndarray]:
    """The `count` decoded frames of `path`, one at a time (see the module docstring).

    Raises:
        MissingDecoderError: every installed decoder failed and others exist.
        UnreadableFileError: no pixel data, or data that cannot be decoded (truncated, corrupt).
    """
    first = True
    try:
        for frame in _quietly(_decoded(path, as_rgb, count)):
            first = False
            yield frame
        return
    except MemoryError:
        raise
    except Exception as exc:
        if not first:
            raise _undecodable(path, exc, None) from exc
    ds = _whole_dataset(path)
    try:
        yield from _quietly(_decoded(ds, as_rgb, count))
    except MemoryError:
        raise
    except Exception as exc:
        raise _undecodable(path, exc, ds) from exc


def _decoded(source: Path | Dataset, as_rgb: bool, count: int) -> Iterator[np.ndarray]:
    from pydicom.pixels import iter_pixels, pixel_array

    if count == 1:
        # pixel_array, because pydicom 3.0's iter_pixels fails on some single frames it decodes
        # (a JPEG 2000 frame whose signedness differs from Pixel Representation).
        yield pixel_array(source, as_rgb=as_rgb)
    else:
        yield from iter_pixels(source, as_rgb=as_rgb)


def pixel_data_length(f: BinaryIO, ds: Dataset) -> int | None:
    """The length of native pixel data, read from `f` positioned where a header read stopped; None if unknown.

    A header read with ``stop_before_pixels`` stops at the start of the Pixel Data element, so its
    length field costs a few bytes instead of a second parse of the file.
    """
    uid = _transfer_syntax(ds)
    if uid.is_compressed or uid.is_deflated:
        return None
    element = f.read(8 if uid.is_implicit_VR else 12)
    order = "<" if uid.is_little_endian else ">"
    if len(element) < 8 or struct.unpack(f"{order}HH", element[:4]) != (0x7FE0, 0x0010):
        return None
    return struct.unpack(f"{order}L", element[4:8] if uid.is_implicit_VR else element[8:12])[0]


def warn_excess_pixel_data(path: Path, ds: Dataset, frames: int, length: int | None) -> None:
    """Warn when native pixel data of `length` bytes is longer than Rows x Columns x `frames` need.

    pydicom decodes what the header describes and drops the rest without a word.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 16)
    expected = math.ceil(rows * cols * samples * frames * bits / 8)
    if length is not None and length > expected + expected % 2:
        warnings.warn(
            f"{path}: holds {length} bytes of pixel data, more than its {rows} rows x {cols} columns x {frames} "
            f"frame(s) of {bits} bits need ({expected} bytes); only those are read and the rest is ignored. Rows, "
            "Columns or Number of Frames in the header may be wrong: compare the image with its source.",
            InputWarning,
            stacklevel=2,
        )


def _quietly(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """`frames`, with pydicom's logger silent while each frame is decoded (not while the caller holds it)."""
    while True:
        with held_back("pydicom"):
            frame = next(frames, None)
        if frame is None:
            return
        yield frame


def _whole_dataset(path: Path) -> Dataset:
    import pydicom

    try:
        with held_back("pydicom"):
            ds = pydicom.dcmread(path, force=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise UnreadableFileError(
            f"{path}: the DICOM data cannot be read ({type(exc).__name__}: {exc}); the file is probably truncated "
            "or corrupt. Copy or export it again."
        ) from exc
    set_transfer_syntax_from_encoding(ds)
    return ds


def _undecodable(path: Path, exc: Exception, ds: Dataset | None) -> InputError:
    """The error for pixel data that could not be decoded: no pixel data, a missing decoder, or a damaged file."""
    from pydicom.pixels import get_decoder

    if ds is not None and not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        return UnreadableFileError(
            f"{path}: has image attributes but no Pixel Data element, so it holds no image. Open an image file "
            "instead, or export this one again with its pixel data."
        )
    detail = _plugin_errors(exc)
    if ds is not None and detail:
        uid = _transfer_syntax(ds)
        missing = get_decoder(uid).missing_dependencies
        if missing:
            bits = ds.get("BitsStored") or ds.get("BitsAllocated")
            return MissingDecoderError(
                f"{path}: pixel data is compressed as {uid.name} ({uid}){f', {bits} bits per sample' if bits else ''}, "
                f"and no installed decoder can decode it ({detail}). Install another decoder with "
                f"{_install_hint(uid, missing)}; if that fails too, the file is damaged: export it again."
            )
    return UnreadableFileError(
        f"{path}: the pixel data cannot be decoded ({type(exc).__name__}: {detail or exc}); the file is probably "
        "truncated or corrupt. Copy or export it again."
    )


def _plugin_errors(exc: Exception) -> str:
    """pydicom's "all available plugins failed" message as one line (``plugin: error; ...``), else ``""``."""
    lines = str(exc).splitlines()
    if not lines or not lines[0].startswith("Unable to decode"):
        return ""
    return "; ".join(line.strip() for line in lines[1:] if line.strip())


def _install_hint(uid: UID, missing_dependencies: list[str]) -> str:
    """``pip install ...`` commands for the decoder plugins named in pydicom's `missing_dependencies`."""
    commands = []
    for entry in missing_dependencies:
        plugin = entry.split(" - ")[0].strip()
        if plugin == "pylibjpeg":
            package = next((pkg for key, pkg in _PYLIBJPEG_PACKAGES if key in uid.name), "pylibjpeg")
        else:
            package = _PLUGIN_PACKAGES.get(plugin, plugin)
        commands.append(f"`pip install {package}`")
    return " or ".join(dict.fromkeys(commands)) or "`pip install pylibjpeg pylibjpeg-openjpeg`"
