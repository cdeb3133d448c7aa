"""`medsynth reconstruct`: an image through the autoencoder of a VQGAN checkpoint, written on the image's grid.

Writes the reconstruction (and with ``--difference`` the reconstruction minus the input) as NIfTI
files with the input's shape, voxel order and affine, in its units, marked synthetic. Files are
never overwritten.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medsynth.errors import InputError

log = logging.getLogger("medsynth")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="reconstruct an image with a vqgan-hdfb or vqgan checkpoint (on the image's grid)",
        description=__doc__,
    )
    parser.add_argument("checkpoint", type=Path, metavar="CKPT", help="vqgan-hdfb or vqgan checkpoint")
    parser.add_argument("image", type=Path, metavar="IMAGE", help="NIfTI file or DICOM file/folder")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="reconstruction (.nii or .nii.gz)")
    parser.add_argument("--difference", type=Path, metavar="FILE", help="also write reconstruction - input here")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.set_defaults(func=run)


def run(args) -> int:
    from medsynth.io import read_image, write_nifti
    from medsynth.training.reconstruct import reconstruct

    outputs = [path for path in (args.out, args.difference) if path is not None]
    for path in outputs:
        if path.exists():
            raise InputError(f"{path} exists; choose a new file name (files are never overwritten)")
    if len(set(outputs)) < len(outputs):
        raise InputError("--out and --difference name the same file; give two names")
    result = reconstruct(args.checkpoint, read_image(args.image), device=args.device)
    write_nifti(result.reconstruction, args.out)
    if args.difference is not None:
        write_nifti(result.difference, args.difference)
    log.info("wrote the reconstruction of %s to %s", args.image, args.out)
    return 0
