"""`medsynth evaluate`: compare synthetic images with real ones and print mean, SD and n per metric.

Files and folders are read with `medsynth.io.read`. Each 2D image is one item; each 3D volume is one
item (evaluated per volume) unless ``--slices`` makes its slices the items; the frames of a time
series are items. All items of a set must have the same shape.
"""

from __future__ import annotations

import argparse
import logging
import math
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
    parser.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
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
    from medsynth.metrics.evaluate import available_metrics, evaluate, to_csv, to_json

    if args.metrics == "list":
        for name, definition in available_metrics().items():
            print(f"{name:<14} {definition}")
        return 0
    if not args.real or not args.fake:
        raise InputError("give the real images with --real PATH... and the synthetic ones with --fake PATH...")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
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
        progress=lambda done, total, label: log.debug("%d/%d %s", done, total, label),
    )
    print_table(results)
    if args.json:
        log.info("wrote %s", to_json(results, args.json))
    if args.csv:
        log.info("wrote %s", to_csv(results, args.csv))
    return 0
