"""Writing one fused scene: the image and its lesion labels as NIfTI, DICOM and DICOM-SEG, all marked
synthetic, and a JSON manifest whose lesion records are those of ``medsynth lesions``
(`medsynth.lesions.manifest.LesionRecord`).

Files are named after the image and never overwritten: any clash refuses the export before a file is
written. Each file is written to a temporary name and renamed into place (`medsynth.io` writers).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from medsynth.atomic import write_text
from medsynth.errors import InputError
from medsynth.lesions.scene import FusedScene, Scene


def export_scene(
    folder: str | os.PathLike[str], fused: FusedScene, scene: Scene, manifest: dict[str, Any]
) -> list[Path]:
    """Write `fused` into `folder` as ``<stem>.nii.gz``, ``<stem>_labels.nii.gz``, ``<stem>_dicom/``,
    ``<stem>_seg.dcm`` and `manifest` as ``<stem>.json``; `stem` is the image's name."""
    from medsynth.io import write_dicom, write_dicom_seg, write_nifti

    folder = Path(folder)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", fused.image.name).strip("_") or "lesions"
    targets = {
        "image": folder / f"{stem}.nii.gz",
        "labels": folder / f"{stem}_labels.nii.gz",
        "seg": folder / f"{stem}_seg.dcm",
        "manifest": folder / f"{stem}.json",
        "dicom": folder / f"{stem}_dicom",
    }
    clashes = [str(path) for path in targets.values() if path.exists()]
    if clashes:
        raise InputError(f"{', '.join(clashes)} exist already; choose an empty folder (files are never overwritten)")
    written = [write_nifti(fused.image, targets["image"]), write_nifti(fused.labels, targets["labels"])]
    dicom = write_dicom(fused.image, targets["dicom"])
    names = {p.label_id: f"Synthetic lesion {p.label_id}" for p in scene}
    seg = write_dicom_seg(fused.labels, dicom, targets["seg"], provenance=fused.labels.synthetic, segment_names=names)
    written += [*dicom, seg]
    written.append(write_text(targets["manifest"], json.dumps(manifest, indent=2)))
    return written
