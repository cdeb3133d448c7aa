"""Can this output be written, and as what: the checks every command makes before any work.

A run that trains for an hour and only then finds that it cannot save, that generates a million
images for a disk that holds a thousand, or that turns a mistyped ``x.nii.gzz`` into a DICOM folder,
has cost the user that time. The CLI and the core call these checks first; each raises `InputError`
naming the path, what is wrong with it and the fix.

- `output_format`: the format a path asks for, by its name alone (a NIfTI file or a DICOM folder).
- `check_folder`, `check_new_file`: the location can be written. Nothing is created: a folder that
  does not exist yet only needs its nearest existing ancestor to be a writable folder.
- `check_free_space`: the output fits the free space of its file system.

The writing itself, complete or not at all, is `medsynth.atomic`'s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from medsynth.errors import InputError
from medsynth.io.nifti import is_nifti_path

OutputFormat = Literal["nifti", "dicom"]
ACCEPTED = "a NIfTI file (.nii or .nii.gz) or a folder for DICOM files (a name without a suffix, or an existing folder)"


def output_format(path: str | os.PathLike[str]) -> OutputFormat:
    """``"nifti"`` for a ``.nii``/``.nii.gz`` name, ``"dicom"`` for a folder (existing, or a name without suffix).

    Raises:
        InputError: any other name; the message lists what is accepted.
    """
    path = Path(path)
    if is_nifti_path(path):
        return "nifti"
    if path.is_dir() or not path.suffix:
        return "dicom"
    if path.suffix.lower() in (".dcm", ".dicom"):
        hint = f"DICOM output is a folder of files: give a folder name such as {path.with_suffix('')}"
    else:
        hint = f"rename it, e.g. {path.name.split('.')[0] or 'output'}.nii.gz, or create the folder first to write DICOM"
    raise InputError(f"output {path}: unknown output type {path.suffix!r}. medsynth writes {ACCEPTED}; {hint}.")


def check_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """`path` as a Path when it is a writable folder or can be created as one; else `InputError`."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder; choose a folder (it is created if missing)")
    _check_writable_ancestor(path, path, what)
    return path


def check_new_file(
    path: str | os.PathLike[str], what: str = "output file", *, overwrite: bool = False, create_parents: bool = True
) -> Path:
    """`path` as a Path when a file can be written there; else `InputError`.

    An existing file is refused unless `overwrite`; without `create_parents` the folder it goes into
    must exist already (so that a typo in a results path does not create folders).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise InputError(f"{what} {path} exists; choose a new file name (files are never overwritten)")
    if not create_parents and not path.parent.is_dir():
        problem = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise InputError(f"{what} {path}: its folder {path.parent} {problem}; create the folder or choose another path")
    _check_writable_ancestor(path.parent, path, what)
    return path


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes free on the file system that holds `path` (or would hold it, once created)."""
    return shutil.disk_usage(_nearest_existing(Path(path).expanduser())).free


def check_free_space(path: str | os.PathLike[str], needed: int, what: str) -> None:
    """`InputError` when the file system of `path` has less than `needed` bytes free for `what`."""
    free = free_bytes(path)
    if needed > free:
        raise InputError(
            f"{what} needs about {_size(needed)} but {Path(path).absolute()} has {_size(free)} free; ask for fewer, "
            "or write to a disk with more space"
        )


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_ancestor(folder: Path, target: Path, what: str) -> None:
    """`InputError` naming `target` unless `folder` is, or can be created as, a folder we can write into."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise InputError(
            f"{what} {target} cannot be created: {base} is a file, not a folder; choose another location"
        )
    try:
        # A real write is the only reliable test: os.access says yes to root on read-only mounts and
        # knows nothing of quotas or ACLs. TemporaryFile leaves no name behind (O_TMPFILE where supported).
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise InputError(
            f"{what} {target} cannot be written: folder {base} refuses new files ({exc.strerror or exc}); choose a "
            "folder you can write to, or change its permissions"
        ) from None


def _size(n: float) -> str:
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.0f} bytes" if k == 0 else f"{n:.1f} {units[k]}"
