"""`medsynth lesions`: synthetic images with SinGAN lesions placed outside the danger zone, plus masks and a manifest.

Writes ``synthetic_NNNN.nii.gz`` (marked synthetic), ``synthetic_NNNN_mask.nii.gz`` (label map, one
id per lesion), ``manifest.csv`` and ``manifest.json`` into ``--out``; with ``--location-labels``
also the fitted prior as ``location_prior.json``. ``--danger`` and ``--location-model`` also take
checkpoints of the learned models (``medsynth train --recipe danger-unet`` / ``lesion-heatmap``);
files are told apart by their content. ``manifest.json`` records every option (``options``) and
the ``command`` that makes the same images again. ``--out`` is checked before any model is loaded:
it must be a folder that can be written and holds no earlier run's manifest. The files are written
into a temporary folder and moved into ``--out`` only when every image succeeded
(`medsynth.atomic.staged_folder`), so a failed run leaves nothing and files already there are never
replaced.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medsynth.errors import InputError

log = logging.getLogger("medsynth")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "lesions",
        help="fuse SinGAN lesions into background images (outside the danger zone) and write images, masks, manifest",
        description=__doc__,
    )
    parser.add_argument("--background", nargs="+", required=True, type=Path, metavar="PATH", help="background images (NIfTI or DICOM)")
    parser.add_argument("--lesion-model", required=True, type=Path, metavar="CKPT", help="SinGAN lesion checkpoint (.safetensors)")
    parser.add_argument(
        "--danger",
        nargs="+",
        default=["auto"],
        type=_danger_source,
        metavar="PATH|auto",
        help="danger-zone masks (1 permissible, 0 forbidden) or danger-unet checkpoints, one per background or one for all; "
        "'auto' bootstraps them from intensity rules (default)",
    )
    prior = parser.add_mutually_exclusive_group()
    prior.add_argument(
        "--location-model",
        type=Path,
        metavar="JSON|CKPT",
        help="location prior written by an earlier run (JSON), or a lesion-heatmap checkpoint whose predicted heatmap "
        "on each background gives the candidates",
    )
    prior.add_argument("--location-labels", nargs="+", type=Path, metavar="PATH", help="historical lesion label maps to fit the location prior on")
    parser.add_argument("--per-image", type=int, default=1, metavar="K", help="lesions per image (default 1)")
    parser.add_argument("--num", type=int, metavar="N", help="number of images (default: one per background)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--size", nargs=2, type=float, default=(0.8, 1.2), metavar=("MIN", "MAX"), help="lesion size factor range (default 0.8 1.2)")
    parser.add_argument("--variability", type=int, default=0, metavar="SCALE", help="scale where fresh noise starts: 0 = most varied (default)")
    parser.add_argument("--min-spacing", type=float, default=0.0, metavar="PX", help="minimum distance between lesion centres (pixels)")
    parser.add_argument("--candidates", type=int, default=50, metavar="K", help="top-k location candidates when a prior is used (default 50)")
    parser.add_argument("--blend", choices=("published", "feather"), default="published", help="fusion blend (default: as published)")
    parser.add_argument("--slice", type=int, metavar="Z", help="slice of 3D backgrounds to put lesions in (default: the middle one)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from medsynth.atomic import staged_folder
    from medsynth.io import read_image, write_nifti
    from medsynth.io.output import check_folder
    from medsynth.lesions.batch import BatchOptions, manifest_rows, synthesize, write_manifest
    from medsynth.lesions.singan_training import load_singan

    check_folder(args.out, "--out")
    earlier = [name for name in ("manifest.csv", "manifest.json") if (args.out / name).exists()]
    if earlier:
        raise InputError(
            f"--out {args.out} holds the results of an earlier run ({earlier[0]}); choose a new or empty folder "
            "(files are never overwritten)"
        )
    lesion_generator = load_singan(args.lesion_model)
    backgrounds = [read_image(path) for path in args.background]
    for path, image in zip(args.background, backgrounds):
        image.metadata.setdefault("source", str(path))
    dangers, danger_source = _dangers(args.danger, backgrounds)
    prior, prior_source = _prior(args)
    options = BatchOptions(
        per_image=args.per_image,
        size_range=tuple(args.size),
        start_scale=args.variability,
        min_spacing=args.min_spacing,
        candidates=args.candidates,
        blend=args.blend,
        slice_index=args.slice,
        checkpoint=args.lesion_model.name,
    )
    num = args.num if args.num is not None else len(backgrounds)
    with staged_folder(args.out) as work:
        if args.location_labels:
            from medsynth.lesions.location import save_location_prior

            save_location_prior(prior, work / "location_prior.json")
            prior_source = str(args.out / "location_prior.json")
        cases, files = [], []
        for case in synthesize(backgrounds, dangers, lesion_generator, num, args.seed, options, prior):
            image_path = write_nifti(case.image, work / f"{case.image.name}.nii.gz")
            mask_path = write_nifti(case.labels, work / f"{case.labels.name}.nii.gz")
            cases.append(case)
            files.append((image_path.name, mask_path.name))
            log.info("%s: %d lesions into %s", image_path.name, len(case.lesions), case.background)
        models = {"lesion_model": str(args.lesion_model), "location_model": prior_source, "danger": danger_source}
        write_manifest(manifest_rows(cases, files, models), _meta(args, num, models), work)
    log.info("wrote %d images, their masks and %s", len(cases), args.out / "manifest.csv")
    return 0


def _meta(args, num: int, models: dict[str, str]) -> dict:
    """The run-level part of ``manifest.json``: seed, counts, models, every option and the command that repeats the run."""
    recorded = recorded_options(args)
    return {
        "seed": args.seed,
        "num": num,
        "per_image": args.per_image,
        "blend": args.blend,
        "models": models,
        "options": recorded,
        "command": ["medsynth", "lesions", *option_argv(recorded)],
    }


def recorded_options(args) -> dict:
    """Every option of this run, JSON-ready, paths made absolute so that the command works from any folder."""
    options = {}
    for name, value in vars(args).items():
        if name in ("func", "command", "verbose"):
            continue
        if isinstance(value, Path):
            value = str(value.resolve())
        elif isinstance(value, (list, tuple)):
            value = [str(v.resolve()) if isinstance(v, Path) else v for v in value]
        options[name] = value
    return options


def option_argv(options: dict) -> list[str]:
    """The ``medsynth lesions`` arguments that give `options` again (each option is ``--`` + its name)."""
    argv = []
    for name, value in options.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


def _danger_source(text: str) -> str | Path:
    """``auto``, or the path of a mask or checkpoint (a Path, so that the manifest records it absolute)."""
    return text if text == "auto" else Path(text)


def _dangers(sources: list[str | Path], backgrounds: list) -> tuple[list[np.ndarray], str]:
    """One ``M_danger`` per background: bootstrapped (``auto``), read from mask files or predicted by danger-unet checkpoints."""
    if sources == ["auto"]:
        from medsynth.lesions.danger import bootstrap_danger

        return [bootstrap_danger(image) for image in backgrounds], "auto"
    if "auto" in sources:
        raise InputError("--danger 'auto' cannot be mixed with files; give 'auto' alone, or one file per background")
    if len(sources) not in (1, len(backgrounds)):
        raise InputError(
            f"--danger got {len(sources)} files for {len(backgrounds)} backgrounds; give one mask or checkpoint per "
            "background, one for all, or 'auto'"
        )
    from medsynth.lesions.learned import danger_for, load_danger_source

    loaded = [load_danger_source(path) for path in sources]
    masks = [danger_for(loaded[k % len(loaded)], image) for k, image in enumerate(backgrounds)]
    return masks, " ".join(map(str, sources))


def _prior(args):
    """The location model and where it came from (``""`` without one)."""
    if args.location_model is not None:
        from medsynth.lesions.learned import load_location_model

        return load_location_model(args.location_model), str(args.location_model)
    if args.location_labels:
        from medsynth.io import read_image
        from medsynth.lesions.location import fit_location_prior

        maps = [np.asarray(read_image(path, as_label=True).array) for path in args.location_labels]
        return fit_location_prior(maps), ""
    return None, ""
