"""Run folders: every training run writes into a folder of its own, and no run touches another's files.

Layout::

    runs/                                 the parent: `medsynth train --out`, the Train widget's output folder
        2026-12-05_143201_dcgan/          one run, named by `--name` or by its start time and recipe
            medsynth-run.json             what the run is: name, recipe, start time, the checkpoint it resumed
            checkpoint-0000500.safetensors
            checkpoint-0001000.safetensors

`run_folder` chooses a run's folder under a parent: a new one, or, for a run resumed from the newest
checkpoint of a run under that parent, that run's own folder (the run continues there). The trainer
refuses a folder that holds another run (`check_run_folder`, called by `check_config`) and marks its
folder when it starts (`start_run`), so two runs never mix their checkpoints, whichever interface
started them.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

import medsynth
from medsynth.errors import InputError

RUN_FILE = "medsynth-run.json"
TIME_FORMAT = "%Y-%m-%d_%H%M%S"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.safetensors$")


def run_name(recipe: str, when: datetime | None = None) -> str:
    """The default name of a run: its start time and recipe, e.g. ``2026-12-05_143201_dcgan``."""
    return f"{(when or datetime.now()).strftime(TIME_FORMAT)}_{recipe}"


def run_folder(
    parent: str | os.PathLike[str],
    recipe: str,
    *,
    name: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    when: datetime | None = None,
) -> Path:
    """The folder of a run of `recipe` under `parent`; nothing is created.

    - `name` given: ``parent / name`` (the trainer refuses it if it holds another run);
    - `resume` given, no `name`: the folder of `resume` when that is a run under `parent` and `resume` is
      its newest checkpoint, so the run continues where it stopped;
    - otherwise a new folder ``parent / run_name(recipe, when)``, with ``-2``, ``-3``... added when a run
      of the same second exists.
    """
    parent = Path(parent).expanduser()
    if name is not None:
        return parent / _checked_name(name)
    if resume is not None:
        resume = Path(resume).expanduser()
        if resume.parent.parent.absolute() == parent.absolute() and newest_checkpoint(resume.parent) == resume:
            return resume.parent
    base = run_name(recipe, when)
    candidate, k = parent / base, 1
    while candidate.exists():
        k += 1
        candidate = parent / f"{base}-{k}"
    return candidate


def _checked_name(name: str) -> str:
    if not name.strip() or name in (".", "..") or "/" in name or os.sep in name:
        raise InputError(
            f"run name {name!r} must be a plain folder name (no '/', not '.' or '..'), e.g. --name baseline-lr2e-4"
        )
    return name


def checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint files of a run folder, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The checkpoint of the highest step in `folder`, or None."""
    found = checkpoints(folder)
    return found[-1] if found else None


def holds_run(folder: str | os.PathLike[str]) -> bool:
    """True when `folder` holds a run: its `RUN_FILE` or checkpoints (written before runs had their own folder)."""
    folder = Path(folder)
    return (folder / RUN_FILE).exists() or bool(checkpoints(folder))


def check_run_folder(folder: str | os.PathLike[str], resume: str | os.PathLike[str] | None = None) -> None:
    """`InputError` when a run into `folder` would mix with the run already there.

    A folder is free when it is new or holds no run; a run already there may only be continued, with
    `resume` its newest checkpoint (continuing from an older one would overwrite the later ones).
    """
    folder = Path(folder).expanduser()
    if not holds_run(folder):
        return
    newest = newest_checkpoint(folder)
    if resume is not None and Path(resume).expanduser().absolute().parent == folder.absolute():
        if newest is not None and newest.absolute() != Path(resume).expanduser().absolute():
            raise InputError(
                f"{resume} is not the newest checkpoint of the run in {folder} ({newest.name} is): continuing from it "
                f"would overwrite the later ones; resume from {newest}, or start a new run from it under another "
                "name (--name)"
            )
        return
    what = f"its newest checkpoint is {newest.name}" if newest is not None else "no checkpoint yet"
    cont = f", or continue that run with --resume {newest}" if newest is not None else ""
    raise InputError(
        f"{folder} holds another run ({what}); its files are never overwritten: choose another run name (--name) or "
        f"an empty folder{cont}"
    )


def start_run(folder: str | os.PathLike[str], recipe: str, resume: str | os.PathLike[str] | None = None) -> Path:
    """Create the run folder and its `RUN_FILE`, claiming the folder for this run; return the folder.

    A continued run (its folder already has `RUN_FILE`) keeps the record it has. `InputError` when
    another run claimed the folder since `check_run_folder` was called.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / RUN_FILE
    continuing = resume is not None and Path(resume).expanduser().absolute().parent == folder.absolute()
    if continuing and record.exists():
        return folder
    content = {
        "name": folder.name,
        "recipe": recipe,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "resumed_from": str(Path(resume).absolute()) if resume is not None else None,
        "medsynth_version": medsynth.__version__,
    }
    try:
        # Exclusive creation: of two runs started into one folder at the same moment, one gets it.
        with open(record, "x", encoding="utf-8") as f:
            f.write(json.dumps(content, indent=2) + "\n")
    except FileExistsError:
        raise InputError(
            f"{folder} was just claimed by another run; choose another run name (--name) or an empty folder"
        ) from None
    return folder
