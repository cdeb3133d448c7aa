"""Atomic writes: a file or folder we write is either complete or absent, never half written.

Everything medsynth writes (images, checkpoints, manifests, metric tables) goes through `atomic_path`
(one file) or `staged_folder` (files that must appear together, such as a DICOM series): the caller
writes into a temporary in the destination folder, which takes the final name only when writing
succeeded.

Temporaries are named ``.<target>.<pid>-<random>.medsynth-tmp``: hidden, and with no image or
checkpoint suffix, so no folder reader takes one for data. A process killed while writing (kill -9,
power loss) cannot remove its temporary; the next write into the same folder does, taking only
names of that pattern whose process is gone and that are older than the current process, so a write
still in progress elsewhere is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from medsynth.errors import InputError

TEMP_SUFFIX = ".medsynth-tmp"
_STARTED = time.time()
"""Temporaries modified after this moment may belong to a write of this very run."""
_TARGET_CHARS = 100
"""Characters of the target's name kept in a temporary's name, so that it stays within name limits."""
_swept: set[Path] = set()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is synced and renamed onto `path`.

    On error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, **_temp_affixes(path.parent, path.name))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results are ordinary files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; on success its entries appear in `out` (created if missing).

    Entries of `out` are never replaced: when one of the staged names exists there already, nothing
    is moved and `InputError` names the clash. On error the staged files are removed and `out` is
    untouched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} is a file; give a folder (created if missing)")
    home = out if out.is_dir() else out.parent
    home.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=home, **_temp_affixes(home, out.name)))
    try:
        yield stage
        _move_entries(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries in `folder` left by medsynth processes that died while writing.

    Only names of our pattern count, and only those older than this process whose writer is gone;
    returns what was removed.
    """
    removed = []
    try:
        entries = sorted(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    except OSError:
        return removed
    for entry in entries:
        if not _is_stale(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _temp_affixes(folder: Path, target: str) -> dict[str, str]:
    """`tempfile` prefix and suffix for a temporary of `target` in `folder`, after clearing stale ones there."""
    folder = folder.resolve()
    if folder not in _swept:
        remove_stale_temporaries(folder)
        _swept.add(folder)
    return {"prefix": f".{target[:_TARGET_CHARS]}.{os.getpid()}-", "suffix": TEMP_SUFFIX}


def _is_stale(entry: Path) -> bool:
    writer = entry.name[: -len(TEMP_SUFFIX)].rpartition(".")[2].partition("-")[0]
    if not writer.isdigit():
        return False
    try:
        modified = entry.lstat().st_mtime
    except OSError:
        return False
    return modified < _STARTED and not _process_alive(int(writer))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":
        # Signal 0 would be CTRL_C_EVENT there; the age check alone decides.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _move_entries(stage: Path, out: Path) -> None:
    """Move the entries of `stage` into `out`, all or none (the whole folder when `out` is new)."""
    _sync_files(stage)
    if not out.exists():
        stage.chmod(0o755)  # mkdtemp makes the folder private; results are an ordinary folder
        try:
            stage.rename(out)
            return
        except OSError:
            out.mkdir(parents=True, exist_ok=True)  # made meanwhile by another writer: move entry by entry
    entries = sorted(stage.iterdir())
    clashes = [entry.name for entry in entries if (out / entry.name).exists()]
    if clashes:
        raise InputError(
            f"{len(clashes)} of the {len(entries)} files to write exist already in {out}, e.g. {clashes[0]}; "
            "nothing was written. Choose an empty or new folder (files are never overwritten)."
        )
    for entry in entries:
        entry.replace(out / entry.name)


def _sync_files(folder: Path) -> None:
    """Flush the files of `folder` to disk, so that a crash after the move cannot leave them empty."""
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            with open(entry, "rb+") as f:
                os.fsync(f.fileno())
