"""`medsynth train`, `medsynth generate` and `medsynth recipes`.

Recipes trained on ``(image, target)`` pairs (data kinds in
`medsynth.training.recipe.TARGET_DATA_KINDS`, e.g. ``danger-unet``) take ``--targets``: one label
map or mask per ``--data`` image, in the same order, on that image's grid. Two-domain recipes
(``cyclegan``, ``kgan-fusion``) take domain A's images as ``--data`` and domain B's as ``--data-b``,
and `generate` applies them to given images with ``--input`` (`medsynth.training.translate`).

Every run writes into a folder of its own under ``--out``: ``--name``, or the start time and the
recipe (`medsynth.training.runs`); a folder that holds another run is refused, and ``--resume`` from
the newest checkpoint of a run under ``--out`` continues that run in its folder.

Training prints a progress bar when stderr is a terminal and plain log lines otherwise (files,
Slurm). SIGINT and SIGTERM stop training after the current step and write a checkpoint, from the
command's first moment on (a stop while the data is read gives a step-0 checkpoint); a second SIGINT
aborts. Under torchrun every rank runs this command and only rank 0 prints.

`generate` makes its images a chunk at a time and writes each chunk before making the next, into a
NIfTI file (`medsynth.io.stream`) or a folder of DICOM files moved into place when complete; an output
that cannot be written or does not fit the free space is refused before the images are made.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import signal
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.cli.progress import ProgressLine
from medsynth.errors import InputError, SettingsError

log = logging.getLogger("medsynth")

CONFIG_KEYS_FROM_ARGS = {
    "recipe": "recipe",
    "out": "out_dir",
    "device": "device",
    "resume": "resume",
}
"""Flags that set `TrainConfig` fields besides those generated from its declared parts (`DECLARED_PARTS`)."""


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a recipe on images",
        description="Train a GAN recipe on NIfTI/DICOM images. Settings: `medsynth recipes`.",
    )
    train.add_argument("--recipe", help="recipe name (see `medsynth recipes`)")
    add_run_arguments(train)
    train.set_defaults(func=run_train)

    generate = subparsers.add_parser(
        "generate", help="generate synthetic images from a checkpoint", description="Generate synthetic images."
    )
    generate.add_argument("checkpoint", type=Path, metavar="CKPT")
    generate.add_argument("--num", "-n", type=int, help="number of images (recipes that draw from noise)")
    generate.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="a .nii/.nii.gz file, or a folder for DICOM"
    )
    generate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    generate.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    translation = generate.add_argument_group("two-domain recipes (e.g. cyclegan, kgan-fusion)")
    translation.add_argument(
        "--input",
        action="append",
        type=Path,
        metavar="PATH",
        help="image to translate; give it twice for a fusion (domain A, then B). The output lies on its grid",
    )
    translation.add_argument("--direction", help="translation direction, e.g. a2b (default) or b2a")
    sequences = generate.add_argument_group("sequence recipes (e.g. hrgan-dtcr)")
    sequences.add_argument("--frames", type=int, help="frames per sequence (default: the training clip length)")
    sequences.add_argument("--resolution", type=int, help="side length in pixels (default: the training size)")
    sequences.add_argument("--modality", help="modality to condition on (default: the training data's)")
    sequences.add_argument("--tile", type=int, help="generate in tiles of this size to bound memory (large sizes)")
    generate.set_defaults(func=run_generate)

    recipes = subparsers.add_parser("recipes", help="list recipes and their settings")
    recipes.set_defaults(func=run_recipes)


def add_run_arguments(parser, normalization: bool = True) -> None:
    """The flags of a training run besides ``--recipe``: data, output, settings, resume, run options, normalisation.

    Without `normalization` (a recipe bound to another model's intensity map) its flags are absent and None.
    """
    from medsynth.cli.flags import add_setting_flags
    from medsynth.data.normalization import NormalizationOptions
    from medsynth.settings import describe
    from medsynth.training.config import RunOptions

    parser.add_argument("--data", nargs="+", type=Path, metavar="PATH", help="NIfTI files or DICOM files/folders")
    parser.add_argument(
        "--targets",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="target label maps or masks, one per --data image in the same order (recipes marked 'needs --targets')",
    )
    parser.add_argument(
        "--data-b",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="domain-B images of two-domain recipes (cyclegan, kgan-fusion); --data holds domain A's",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="parent folder of the runs: each run writes into a folder of its own"
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="the run's folder name in --out (default: start time and recipe, e.g. 2026-12-05_143201_dcgan)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe setting (repeatable)")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="JSON or TOML file of training options and a [settings] table"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="CKPT",
        help="continue from this checkpoint: in its run's folder when that is in --out and no other --name is given",
    )
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    add_setting_flags(parser, RunOptions, "run options")
    if normalization:
        add_setting_flags(parser, NormalizationOptions, "intensity normalisation (recipes on a lesion crop use the crop's own range)")
    else:
        parser.set_defaults(**{info.name: None for info in describe(NormalizationOptions)})


def run_train(args) -> int:
    from medsynth.training.control import TrainControl

    control = TrainControl()
    # Installed before anything slow (importing torch, reading the data): a stop from then on ends
    # in a step-0 checkpoint and the documented message, never in a bare exit 143.
    with stop_on_signals(control):
        return _train(args, control)


def _train(args, control) -> int:
    from medsynth.cli.flags import given_settings
    from medsynth.training.config import DECLARED_PARTS, TrainConfig
    from medsynth.training.distributed import context_from_env
    from medsynth.training.runs import run_folder
    from medsynth.training.trainer import check_config, train

    values = read_config(args.config) if args.config else {}
    config_data = config_paths(values, "data", args.config)
    config_targets = config_paths(values, "targets", args.config)
    config_data_b = config_paths(values, "data_b", args.config)
    data_paths = args.data or config_data
    target_paths = args.targets or config_targets
    for arg, key in CONFIG_KEYS_FROM_ARGS.items():
        if getattr(args, arg) is not None:
            values[key] = getattr(args, arg)
    for part in DECLARED_PARTS:
        values.update(given_settings(args, part))
    assignments = parse_assignments(args.set)
    if isinstance(values.get("settings", {}), dict):  # any other value is reported by `from_mapping`
        values["settings"] = {**values.get("settings", {}), **assignments}
    config = TrainConfig.from_mapping(values)
    if not data_paths:
        raise InputError("no training data: give --data PATH [PATH ...] (or `data` in the config file)")
    # --out (`out_dir` of a config file) is the parent of the runs; the trainer gets the run's own folder.
    folder = run_folder(config.out_dir, config.recipe, name=args.name, resume=config.resume)
    config = dataclasses.replace(config, out_dir=folder)
    check_config(config)  # settings, resume checkpoint, run folder: all before the data is read
    is_main = context_from_env().is_main
    if is_main:
        log.info("run folder %s", folder)
    data_b = [Path(p) for p in args.data_b or config_data_b or ()]
    data = training_data(
        config.recipe, [Path(p) for p in data_paths], [Path(p) for p in target_paths or ()], data_b
    )
    report = Reporter(enabled=is_main)
    for event in train(config, data, control):
        report(event)
    return 0


def training_data(recipe: str, data_paths: list[Path], target_paths: list[Path], data_b: list[Path] = ()) -> Any:
    """The images of `data_paths`, paired with the targets of `target_paths` when `recipe` trains on pairs.

    InputError, before anything is trained, for targets given to a recipe that takes none, none given
    to one that needs them, a count mismatch, or a target not on its image's grid; likewise for the
    domain-B images `data_b` of a two-domain recipe (`two_domain_data`).
    """
    from medsynth.io import read_image
    from medsynth.training.recipe import TARGET_DATA_KINDS, get_recipe

    kind = get_recipe(recipe).data_kind
    if kind == "two-domain" or data_b:
        return two_domain_data(recipe, data_paths, target_paths, data_b)
    paired = kind in TARGET_DATA_KINDS
    if target_paths and not paired:
        raise InputError(
            f"recipe {recipe!r} trains on images alone and takes no --targets; drop --targets "
            f"(recipes that need them: {', '.join(needing_targets())})"
        )
    if paired and not target_paths:
        raise InputError(
            f"recipe {recipe!r} trains on (image, target) pairs; give --targets PATH [PATH ...], one label map or "
            "mask per --data image in the same order"
        )
    if len(target_paths) != len(data_paths) and paired:
        raise InputError(
            f"--data has {len(data_paths)} image(s) but --targets {len(target_paths)} file(s); give exactly one "
            "target per image, in the same order"
        )
    images = [read_image(path) for path in data_paths]
    if not paired:
        return images
    targets = [read_image(path, as_label=True) for path in target_paths]
    for image_path, image, target_path, target in zip(data_paths, images, target_paths, targets):
        if tuple(target.array.shape) != tuple(image.array.shape):
            raise InputError(
                f"target {target_path} has shape {tuple(target.array.shape)} but its image {image_path} has "
                f"{tuple(image.array.shape)}; a target must lie on its image's grid: resample it onto the image, "
                "or check the order of --targets"
            )
    return list(zip(images, targets))


def two_domain_data(recipe: str, data_paths: list[Path], target_paths: list[Path], data_b: list[Path]):
    """`TwoDomains` of the images of `data_paths` (A) and `data_b` (B), or InputError saying what is wrong."""
    from medsynth.data.domains import TwoDomains
    from medsynth.io import read_image
    from medsynth.training.recipe import get_recipe

    recipe_cls = get_recipe(recipe)
    if recipe_cls.data_kind != "two-domain":
        raise InputError(
            f"recipe {recipe!r} trains on one set of images and takes no --data-b; drop --data-b (two-domain "
            f"recipes: {', '.join(info.name for info in _two_domain_recipes())})"
        )
    if target_paths:
        raise InputError(f"recipe {recipe!r} takes two domains (--data and --data-b), not --targets; drop --targets")
    if not data_b:
        raise InputError(
            f"recipe {recipe!r} trains on two domains: give domain A's images as --data and domain B's as --data-b"
        )
    if recipe_cls.registered and len(data_b) != len(data_paths):
        raise InputError(
            f"--data has {len(data_paths)} image(s) but --data-b {len(data_b)}; recipe {recipe!r} fuses co-registered "
            "pairs: give one --data-b image per --data image, in the same order"
        )
    return TwoDomains(a=[read_image(path) for path in data_paths], b=[read_image(path) for path in data_b])


def _two_domain_recipes() -> list:
    from medsynth.training.recipe import list_recipes

    return [info for info in list_recipes() if info.data_kind == "two-domain"]


def needing_targets() -> list[str]:
    """Names of the recipes trained on ``(image, target)`` pairs (the ones that need ``--targets``)."""
    from medsynth.training.recipe import TARGET_DATA_KINDS, list_recipes

    return [info.name for info in list_recipes() if info.data_kind in TARGET_DATA_KINDS]


def run_generate(args) -> int:
    from medsynth.io.output import check_folder, check_new_file, output_format
    from medsynth.training.checkpoint import load_checkpoint
    from medsynth.training.recipe import get_recipe

    out: Path = args.out
    is_nifti = output_format(out) == "nifti"
    if args.input is None and args.num is None:
        raise InputError("give --num N images to generate, or --input IMAGE to translate with a two-domain recipe")
    if args.num is not None and args.num < 1:
        raise InputError(f"--num {args.num}: the number of images must be at least 1")
    if is_nifti:
        check_new_file(out, "--out")
    else:
        check_folder(out, "--out")
        if out.is_dir() and any(out.glob("*.dcm")):
            raise InputError(f"--out {out} holds DICOM files already; choose a new or empty folder")
    checkpoint = load_checkpoint(args.checkpoint)
    kind = get_recipe(checkpoint.recipe).data_kind
    if args.input is not None or kind == "two-domain":
        what = _write_translation(checkpoint, args, is_nifti)
    elif kind == "sequence":
        what = _write_sequences(checkpoint, args, is_nifti)
    else:
        _refuse_sequence_options(checkpoint, args)
        what = _write_images(checkpoint, args, is_nifti)
    log.info("wrote %s to %s", what, out)
    return 0


SEQUENCE_OPTIONS = ("frames", "resolution", "modality", "tile")


def _write_translation(checkpoint, args, is_nifti: bool) -> str:
    """Translate the ``--input`` images with a two-domain checkpoint and write the result on the first's grid."""
    from medsynth.atomic import staged_folder
    from medsynth.io import read_image, write_dicom, write_nifti
    from medsynth.training.translate import translate, translation_recipe

    recipe_cls = translation_recipe(checkpoint)
    if args.input is None:
        raise InputError(
            f"{args.checkpoint} is a {checkpoint.recipe!r} model, which translates given images: give --input IMAGE "
            f"({'twice: domain A, then domain B' if recipe_cls.inputs == 2 else 'once'}) instead of --num"
        )
    given = [f"--{name}" for name in ("num", *SEQUENCE_OPTIONS) if getattr(args, name) is not None]
    if given:
        raise InputError(f"{', '.join(given)}: not used when translating --input images; drop them")
    inputs = [read_image(path) for path in args.input]
    first = inputs[0]
    what = f"{checkpoint.recipe} {args.direction or next(iter(recipe_cls.directions))} of {args.input[0]}"
    # The result is float32 on the first input's grid; DICOM stores it as 16-bit pixels.
    _check_space(args.out, is_nifti, 4 * first.array.size + 2**16, 1, first.array.size, what)
    progress = ProgressLine(log_fraction=0.1)
    result = translate(
        checkpoint, inputs, args.direction, device=args.device,
        progress=lambda done, total: progress.show(done, total, f"{done}/{total} planes"),
    )  # fmt: skip
    progress.finish()
    if is_nifti:
        write_nifti(result, args.out)
    else:
        with staged_folder(args.out) as work:
            write_dicom(result, work)
    return what


def _refuse_sequence_options(checkpoint, args) -> None:
    """InputError for sequence-only options given with a checkpoint of 2D images (they would change nothing)."""
    given = [f"--{name}" for name in SEQUENCE_OPTIONS if getattr(args, name) is not None]
    if given:
        side = checkpoint.settings.get("resolution")
        size = f" of {side}x{side} px" if side else ""
        raise InputError(
            f"{', '.join(given)}: for sequence recipes (hrgan-dtcr) only, but {args.checkpoint} is a "
            f"{checkpoint.recipe!r} model of 2D images{size}; drop {' and '.join(given)}"
        )


def _write_images(checkpoint, args, is_nifti: bool) -> str:
    """Generate `args.num` 2D images a chunk at a time, each chunk written before the next is made."""
    from medsynth.atomic import staged_folder
    from medsynth.io import write_dicom
    from medsynth.io.stream import nifti_bytes, nifti_stream
    from medsynth.training.generate import images_medimage, iter_images

    num, out = args.num, args.out
    chunks = iter_images(checkpoint, num, seed=args.seed, device=args.device)
    first = next(chunks)  # loads the model; the image size is known from here
    like = images_medimage(first, checkpoint, args.seed)
    shape = (num, *first.shape[1:])
    what = f"{num} synthetic image(s) of {shape[1]}x{shape[2]}"
    _check_space(out, is_nifti, nifti_bytes(like, shape), num, first[0].size, what)
    progress = ProgressLine(log_fraction=0.1)
    done = 0
    if is_nifti:
        with nifti_stream(out, like, shape) as blocks:
            for chunk in itertools.chain([first], chunks):
                blocks.write((done,), chunk)
                done += len(chunk)
                progress.show(done, num, f"{done}/{num} images")
    else:
        with staged_folder(out) as work:
            for chunk in itertools.chain([first], chunks):
                image = images_medimage(chunk, checkpoint, args.seed)
                # Independent samples are not the slices of one volume: each becomes its own file.
                for k in range(len(chunk)):
                    write_dicom(sample_image(image, k, offset=done), work)
                done += len(chunk)
                progress.show(done, num, f"{done}/{num} images")
    progress.finish()
    return what


def _write_sequences(checkpoint, args, is_nifti: bool) -> str:
    """Generate `args.num` sequences a block of frames at a time, each block written before the next is made."""
    from medsynth.atomic import staged_folder
    from medsynth.io import write_dicom
    from medsynth.io.stream import nifti_bytes, nifti_stream
    from medsynth.training.sequences import SequenceJob

    job = SequenceJob(
        checkpoint, args.num, seed=args.seed, frames=args.frames, resolution=args.resolution,
        modality=args.modality, device=args.device, tile=args.tile,
    )  # fmt: skip
    n, frames, side = job.n, job.frames, job.side
    like = job.image(np.zeros((1, 1, 1, 1), dtype=np.float32))
    # One sequence is "tyx" (T, S, S); several stack as "tzyx" (T, N, S, S) on one time slider.
    shape = (frames, side, side) if n == 1 else (frames, n, side, side)
    what = f"{n} synthetic sequence(s) of {frames} frames of {side}x{side}"
    _check_space(args.out, is_nifti, nifti_bytes(like, shape), n, frames * side * side, what)
    progress = ProgressLine(log_fraction=0.1)
    done, total = 0, n * frames
    if is_nifti:
        with nifti_stream(args.out, like, shape) as nifti:
            for i, start, block in job.blocks():
                nifti.write((start,) if n == 1 else (start, i), block if n == 1 else block[:, None])
                done += len(block)
                progress.show(done, total, f"{done}/{total} frames")
    else:
        with staged_folder(args.out) as work:
            sequence = np.empty((1, frames, side, side), dtype=np.float32)  # one sequence: one multi-frame file
            for i, start, block in job.blocks():
                sequence[0, start : start + len(block)] = block
                if start + len(block) == frames:
                    write_dicom(sample_image(job.image(sequence), 0, offset=i), work)
                done += len(block)
                progress.show(done, total, f"{done}/{total} frames")
    progress.finish()
    return what


DICOM_HEADER_BYTES = 8192
"""A generous size of one generated DICOM file's header (about 3 KiB) with its file-system block."""


def _check_space(out: Path, is_nifti: bool, nifti_size: int, files: int, pixels_per_file: int, what: str) -> None:
    """InputError before writing when `what` cannot fit the free space where `out` goes.

    DICOM stores 16-bit pixels; a ``.nii.gz`` is staged uncompressed first, then compressed beside it
    (float images compress little), so it needs about twice the data's size.
    """
    from medsynth.io.output import check_free_space

    if is_nifti:
        needed = nifti_size * (2 if out.name.endswith(".gz") else 1)
    else:
        needed = files * (2 * pixels_per_file + DICOM_HEADER_BYTES)
    check_free_space(out.parent, needed, what)


def sample_image(samples, k: int, offset: int = 0):
    """Sample `k` of a generated stack as its own `MedImage` with the stack's units and provenance.

    ``(N, H, W)`` images give a 2D image; sequences (``"tyx"`` for one, ``"tzyx"`` with z indexing
    the samples) give the ``"tyx"`` cine of sample `k`. The stack may be a chunk of a larger output
    that starts at sample `offset`: names and ``sample_index`` count from there.
    """
    from medsynth.io.image import MedImage

    if samples.axes == "tyx":
        return samples
    array = samples.array[:, k] if samples.has_time else samples.array[k]
    return MedImage(
        array=array,
        axes="tyx" if samples.has_time else "yx",
        spacing=samples.spacing[1:],
        time_spacing=samples.time_spacing,
        modality=samples.modality,
        units=samples.units,
        name=f"{samples.name} {offset + k + 1:04d}",
        synthetic=samples.synthetic,
        metadata={**samples.metadata, "sample_index": offset + k},
    )


def run_recipes(args) -> int:
    from medsynth.settings import describe
    from medsynth.training.recipe import TARGET_DATA_KINDS, list_recipes

    for info in list_recipes():
        kind = info.data_kind
        if info.data_kind in TARGET_DATA_KINDS:
            kind += ", needs --targets"
        elif info.data_kind == "two-domain":
            kind += ", needs --data-b; generate --input"
        print(f"{info.name}  [{kind}]  {info.description}")
        for s in describe(info.settings_cls):
            if s.choices is not None:
                valid = "one of " + ", ".join(map(str, s.choices))
            elif s.min is not None or s.max is not None:
                valid = f"{'' if s.min is None else format(s.min, 'g')}..{'' if s.max is None else format(s.max, 'g')}"
            else:
                valid = ""
            print(f"    {s.name:<15} {s.type.__name__:<6} default {s.default!s:<8} {valid:<22} {s.help}")
        print()
    return 0


def read_config(path: Path) -> dict[str, Any]:
    """A training config file: JSON (``.json``) or TOML (anything else), as a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            values = tomllib.loads(text)
    except ValueError as exc:
        raise InputError(
            f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}"
        ) from None
    if not isinstance(values, dict):
        raise InputError(f"config file {path} must hold a table of options, not {type(values).__name__}")
    return values


def config_paths(values: dict[str, Any], key: str, path: Path | None) -> list[str] | None:
    """Pop the file list `key` (``data``, ``targets``, ``data_b``) of a config file's table: one path or a list."""
    paths = values.pop(key, None)
    if isinstance(paths, str):
        return [paths]
    if paths is not None and not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        raise SettingsError(
            f"config file {path}: {key}={paths!r} must be a file path or a list of them, "
            f'e.g. {key} = ["ct1.nii.gz", "ct2.nii.gz"]'
        )
    return paths


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["lr_g=1e-4", ...]`` -> ``{"lr_g": "1e-4"}``; values are converted by the settings parser."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set {item!r} must look like KEY=VALUE, e.g. --set batch_size=16")
        out[key.strip()] = value.strip()
    return out


class stop_on_signals:
    """Context manager: SIGINT/SIGTERM request a clean stop; a second SIGINT aborts (KeyboardInterrupt)."""

    def __init__(self, control) -> None:
        self.control = control
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> stop_on_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        log.info("\nstopping after this step and writing a checkpoint (press Ctrl-C again to abort)")
        self.control.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Reporter:
    """Prints training events: a one-line progress bar on a terminal, log lines elsewhere."""

    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.enabled = enabled
        self.progress = ProgressLine(stream)

    def __call__(self, event) -> None:
        from medsynth.training import events

        if not self.enabled:
            return
        if isinstance(event, events.Started):
            log.info(
                "training %s on %s (%d process%s), steps %d..%d",
                event.recipe,
                event.device,
                event.world_size,
                "" if event.world_size == 1 else "es",
                event.start_step,
                event.total_steps,
            )
        elif isinstance(event, events.Progress):
            self._progress(event)
        elif isinstance(event, events.CheckpointSaved):
            self.progress.line(f"checkpoint {event.path}")
        elif isinstance(event, events.Finished):
            self.progress.line(f"{event.reason} at step {event.step}; checkpoint {event.checkpoint}")

    def _progress(self, event) -> None:
        losses = " ".join(f"{name}={value:.4g}" for name, value in event.losses.items())
        seconds = int(event.eta_s)
        eta = f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        phase = f" {event.phase}" if event.phase else ""
        text = f"step {event.step}/{event.total_steps}{phase} {losses} {event.images_per_s:.1f} img/s ETA {eta}"
        self.progress.show(event.step, event.total_steps, text)
