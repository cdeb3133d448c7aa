"""`medsynth evaluate`: compare synthetic images with real ones and print mean, SD and n per metric.

Files and folders are read with `medsynth.io.read`. Each 2D image is one item; each 3D volume is one
item (evaluated per volume) unless ``--slices`` makes its slices the items; the frames of a time
series are items. All items of a set must have the same shape. Paired metrics (PSNR, SSIM) need the
two sets' items to have one shape; the distribution metrics (SWD, FID, KID, temporal) resample images
of different sizes to a common side (``--resample``, ``--side``).

``--fused F --sources A B`` measures fused images against their two co-registered sources instead
(`medsynth.metrics.evaluate.evaluate_fusion`: SF, SSIM to each source and its mean, SCD, with every set
on a 0-255 scale); it takes ``--slices``, ``--json`` and ``--csv``.

Metric names, output paths and options are checked before any image is read. A metric that cannot run
on these images is listed with its reason and the others are kept (exit 0, the failures repeated on
stderr); when none can run, the command exits 2. Files are read a piece at a time (memory-mapped
where the file allows), so memory stays near the size of the larger input.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medsynth.errors import InputError

if TYPE_CHECKING:  # importing the metrics at run time would slow down every `medsynth` command
    from medsynth.metrics.evaluate import MetricResult

log = logging.getLogger("medsynth")

DEFAULT_METRICS = "psnr,ssim,swd"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare synthetic images with real ones (PSNR, SSIM, SWD, FID, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Not `required`: `--metrics list` needs neither.
    parser.add_argument("--real", nargs="+", metavar="PATH", help="real images: files or folders (required)")
    parser.add_argument("--fake", nargs="+", metavar="PATH", help="synthetic images: files or folders (required)")
    parser.add_argument("--fused", nargs="+", metavar="PATH", help="fused images (instead of --real/--fake)")
    parser.add_argument(
        "--sources", nargs=2, metavar=("A", "B"), help="the two source images each fused image was made from"
    )
    parser.add_argument(
        "--metrics",
        help=f"comma-separated metric names (default {DEFAULT_METRICS}); `--metrics list` prints them all",
    )
    parser.add_argument(
        "--mask", metavar="PATH", help="binary mask (one item's shape or the batch's) for SSIM inside/outside"
    )
    parser.add_argument(
        "--data-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="intensity range of the data, e.g. -1024 3071 for CT in HU (default: the real set's min and max)",
    )
    parser.add_argument(
        "--slices", action="store_true", help="evaluate 3D volumes slice by slice instead of per volume"
    )
    parser.add_argument(
        "--resample",
        default="pad",
        metavar="METHOD",
        help="how distribution metrics bring images of different sizes to one: pad (default: pad to a square with "
        "the background, then resize, as training does) or stretch",
    )
    parser.add_argument(
        "--side", type=int, metavar="PX", help="common side for distribution metrics (default: the smaller set's)"
    )
    parser.add_argument("--json", metavar="OUT", help="write results, definitions and versions as JSON")
    parser.add_argument("--csv", metavar="OUT", help="write one row per metric with the per-item values as CSV")
    parser.set_defaults(func=run)


def _load_mask(path: str) -> np.ndarray:
    """The mask at `path` as booleans (any non-zero label counts as inside)."""
    from medsynth.io import read_image

    return np.asarray(read_image(path, as_label=True).array) != 0


def _format(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.6g}"


def print_table(results: Sequence[MetricResult]) -> None:
    width = max(len("metric"), *(len(r.name) for r in results))
    print(f"{'metric':<{width}}  {'mean':>12}  {'SD':>12}  {'n':>5}  note")
    for r in results:
        print(f"{r.name:<{width}}  {_format(r.mean):>12}  {_format(r.sd):>12}  {r.n:>5}  {r.note}")


def run(args: argparse.Namespace) -> int:
    from medsynth.metrics.evaluate import available_metrics, check_metric_names, evaluate

    if args.metrics == "list":
        from medsynth.metrics.evaluate import FUSION_METRICS

        for name, definition in available_metrics().items():
            print(f"{name:<14} {definition}")
        print("with --fused F --sources A B:")
        for name, definition in FUSION_METRICS.items():
            print(f"  {name:<12} {definition}")
        return 0
    if args.fused or args.sources:
        return _run_fusion(args)
    if not args.real or not args.fake:
        raise InputError(
            "give the real images with --real PATH... and the synthetic ones with --fake PATH... "
            "(or fused images with --fused PATH... --sources A B)"
        )
    metrics = check_metric_names([m.strip() for m in (args.metrics or DEFAULT_METRICS).split(",") if m.strip()])
    _check_outputs(args)
    from medsynth.metrics.resample import check_options

    check_options(args.resample, args.side)
    from medsynth.metrics.items import load_items

    real = load_items(args.real, args.slices, "real")
    fake = load_items(args.fake, args.slices, "fake")
    mask = _load_mask(args.mask) if args.mask else None
    log.info("evaluating %d real and %d fake items of shape %s", len(real), len(fake), real.shape[1:])
    results = evaluate(
        real,
        fake,
        metrics=metrics,
        mask=mask,
        data_range=tuple(args.data_range) if args.data_range else None,
        resample=args.resample,
        side=args.side,
        progress=lambda done, total, label: log.debug("%d/%d %s", done, total, label),
    )
    print_table(results)
    failed = [r for r in results if r.error]
    if len(failed) == len(results):
        raise InputError("no metric could be computed: " + "; ".join(f"{r.name}: {r.error}" for r in failed))
    for r in failed:
        print(f"medsynth: warning: {r.name} not computed: {r.error}", file=sys.stderr)
    _write_outputs(args, results)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    from medsynth.metrics.evaluate import check_results_path

    for flag, path in (("--json", args.json), ("--csv", args.csv)):
        if path:
            try:
                check_results_path(path)
            except InputError as exc:
                raise InputError(f"{flag}: {exc}") from None


def _write_outputs(args: argparse.Namespace, results: Sequence[MetricResult], definitions: dict | None = None) -> None:
    from medsynth.metrics.evaluate import to_csv, to_json

    if args.json:
        log.info("wrote %s", to_json(results, args.json, definitions))
    if args.csv:
        log.info("wrote %s", to_csv(results, args.csv))


def _run_fusion(args: argparse.Namespace) -> int:
    """``--fused F... --sources A B``: the fusion figures of `medsynth.metrics.evaluate.evaluate_fusion`."""
    from medsynth.metrics.evaluate import FUSION_METRICS, evaluate_fusion
    from medsynth.metrics.items import load_items

    if not args.fused or not args.sources:
        raise InputError("fusion figures need the fused images (--fused PATH...) and their sources (--sources A B)")
    other = {"--real": args.real, "--fake": args.fake, "--mask": args.mask, "--metrics": args.metrics,
             "--data-range": args.data_range}  # fmt: skip
    mixed = [flag for flag, given in other.items() if given]
    if mixed:
        raise InputError(
            f"--fused/--sources measure the fixed fusion figures ({', '.join(FUSION_METRICS)}) on each set's own "
            f"intensity range; leave out {', '.join(mixed)}, or run a --real/--fake comparison separately"
        )
    _check_outputs(args)
    fused = load_items(args.fused, args.slices, "fused")
    source_a, source_b = (load_items([path], args.slices, f"source {x}") for path, x in zip(args.sources, "AB"))
    log.info("evaluating %d fused items of shape %s against their two sources", len(fused), fused.shape[1:])
    results = evaluate_fusion(fused, source_a, source_b)
    print_table(results)
    _write_outputs(args, results, FUSION_METRICS)
    return 0
