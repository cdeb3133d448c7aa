"""Evaluate a synthetic image set against a real one with several metrics, and save the results.

`evaluate` is what the CLI (``medsynth evaluate``) and the Metrics widget call: it takes two batches,
``(N, H, W)`` images or ``(N, D, H, W)`` volumes, computes the chosen metrics and returns one
`MetricResult` per reported figure (mean, SD, n, the per-item values and a note). `to_json` and
`to_csv` write them atomically; the JSON also holds each metric's definition and the versions of
the software that computed it.

A metric that cannot run on these inputs (MS-SSIM of images under 176 px, FID without its weights or
with one image, a paired metric on sets of different counts or sizes) gives a row with NaN figures
and its reason in `MetricResult.error`; the other metrics are kept. Problems of the inputs
themselves (NaN values, no data range) are raised, before any metric runs.

Distribution metrics (SWD, FID, KID, temporal) compare sets of different image sizes after
resampling both to a common side (`medsynth.metrics.resample`; the row's note says so). PSNR, SSIM and
SWD read the batches a piece at a time (memory maps and `medsynth.metrics.items.ItemStack` batches
included), in float32 and float64 pieces, so their memory does not grow with the data.

Unless given, the data range is taken from the REAL set's global minimum and maximum (over all items,
never one image): PSNR, SSIM and MS-SSIM use the span ``max - min`` without clipping; FID, KID and
LPIPS map ``[min, max]`` onto their networks' [0, 1] input (fake values outside it are clipped).

`evaluate_fusion` measures fused images against their two sources (SF, SSIM to each source, SCD), the
figures that image-fusion papers report; ``medsynth evaluate --fused F --sources A B`` calls it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.atomic import write_text
from medsynth.errors import InputError, MissingWeightsError
from medsynth.io.output import check_new_file
from medsynth.metrics.inputs import DataRange, data_range_bounds, finite_range
from medsynth.metrics.sharpness import scd, spatial_frequency
from medsynth.metrics.swd import swd
from medsynth.versions import package_version

Progress = Callable[[int, int, str], None]


@dataclass
class MetricResult:
    """One reported figure: mean and sample SD over `values` (one per item, pair or figure)."""

    name: str
    mean: float
    sd: float
    n: int
    values: list[float] = field(default_factory=list)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    """Why the metric could not be computed (its figures are then NaN); empty when it was."""


@dataclass(frozen=True)
class _Inputs:
    real: Any
    fake: Any
    """``(N, *item)`` batches: arrays, tensors or `ItemStack`s, read in pieces by the streaming metrics."""
    data_range: DataRange
    """For PSNR and SSIM: the caller's range, or the real set's span (no clipping)."""
    bounds: DataRange
    """For the networks (FID, KID, LPIPS), which map the data onto [0, 1]: the caller's range, or the real
    set's (min, max)."""
    mask: np.ndarray | None
    side: int | None = None
    """The common side of the distribution metrics' 2D images; None when both sets' images have one size."""
    resample: str = "pad"

    def pair(self) -> tuple[Any, Any]:
        """The two batches for a paired metric; InputError when their items cannot be paired."""
        if tuple(self.real.shape[1:]) != tuple(self.fake.shape[1:]):
            raise InputError(
                f"paired metrics compare real item i with fake item i, but real items have shape "
                f"{tuple(self.real.shape[1:])} and fake items {tuple(self.fake.shape[1:])}; give images of one size "
                "(the distribution metrics resample them)"
            )
        if len(self.real) != len(self.fake):
            raise InputError(
                f"paired metrics compare item i with item i, but there are {len(self.real)} real and "
                f"{len(self.fake)} fake items; give equal counts or only distribution metrics (swd, fid, kid)"
            )
        return self.real, self.fake

    def images(self) -> tuple[Any, Any]:
        """The two batches for a distribution metric: as they are, or their 2D images resampled to `side`."""
        if self.side is None:
            return self.real, self.fake
        from medsynth.metrics.resample import Resampled

        fill = data_range_bounds(self.bounds)[0]
        return tuple(Resampled(x, self.side, self.resample, fill) for x in (self.real, self.fake))

    def resample_note(self) -> str:
        """What resampling did to the sets, for the notes of the distribution metrics ("" when nothing)."""
        if self.side is None:
            return ""
        from medsynth.metrics.resample import METHODS

        real, fake = (f"{x.shape[-2]}x{x.shape[-1]}" for x in (self.real, self.fake))
        return f"real {real} and fake {fake} resampled to {self.side}x{self.side} ({METHODS[self.resample]})"


@dataclass(frozen=True)
class _Metric:
    definition: str
    compute: Callable[[_Inputs], list[MetricResult]]
    kind: str = "distribution"
    """``"paired"`` (item i with item i), ``"distribution"`` (the sets' images, resampled to one size when
    they differ) or ``"sets"`` (each set on its own)."""


def _result(name: str, values: Sequence[float], note: str = "", **details: Any) -> MetricResult:
    """Mean and SD over the finite values; non-finite ones (PSNR of identical items) are counted in the note."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    if len(finite) < len(arr):
        extra = f"{len(arr) - len(finite)} of {len(arr)} values not finite (identical items?), left out of mean and SD"
        note = f"{note}; {extra}" if note else extra
    mean = float(finite.mean()) if len(finite) else float("nan")
    sd = float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")
    return MetricResult(name, mean, sd, len(finite), [float(v) for v in arr], note, details)


def _psnr(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.fidelity import psnr

    return [_result("psnr", psnr(*x.pair(), data_range=x.data_range), data_range=x.data_range)]


def _ssim(x: _Inputs, mode: str | None = None) -> list[MetricResult]:
    from medsynth.metrics.fidelity import ssim

    if mode is None:
        return [_result("ssim", ssim(*x.pair(), data_range=x.data_range), data_range=x.data_range)]
    if x.mask is None:
        raise InputError(f"ssim_{mode} needs a mask; give mask= (or --mask PATH)")
    values = ssim(*x.pair(), data_range=x.data_range, mask=x.mask, mask_mode=mode)
    return [_result(f"ssim_{mode}", values, data_range=x.data_range)]


def _ms_ssim(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.fidelity import ms_ssim

    real, fake = x.pair()
    values = ms_ssim(np.asarray(real), np.asarray(fake), data_range=x.data_range)
    return [_result("ms_ssim", values, data_range=x.data_range)]


def _swd(x: _Inputs) -> list[MetricResult]:
    levels = swd(*x.images())
    mean = levels.pop("mean")
    # One figure for the two sets: the average over pyramid levels, as Karras et al. report it.
    note = "x1e3; values are the pyramid levels " + ", ".join(f"{k} px" for k in levels)
    return [MetricResult("swd", mean, float("nan"), 1, list(levels.values()), note, {"levels": levels})]


def _skipped(name: str, exc: MissingWeightsError, kind: str, weight_names: Sequence[str]) -> MetricResult:
    """A NaN result whose note says, in one line, which file to put where; the full message goes in details."""
    from medsynth.weights import REGISTRY, search_dirs

    files = [REGISTRY[w].filename for w in weight_names]
    missing = next((f for f in files if f in str(exc)), files[0])
    note = f"no {kind} weights: {name.upper()} skipped (put {missing} in {search_dirs()[0]})"
    return MetricResult(name, float("nan"), float("nan"), 0, [], note, {"error": str(exc)}, error=note)


def _failed(name: str, exc: InputError) -> MetricResult:
    """The row of a metric that cannot run on these inputs: NaN figures and the reason."""
    return MetricResult(name, float("nan"), float("nan"), 0, [], f"not computed: {exc}", {}, error=str(exc))


def _fid(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.distribution import fid

    try:
        value = fid(*_arrays(x.images()), data_range=x.bounds)
    except MissingWeightsError as exc:
        return [_skipped("fid", exc, "Inception", ["inception-fid"])]
    return [MetricResult("fid", float(value), float("nan"), 1, [float(value)], "one figure for the whole sets")]


def _kid(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.distribution import kid

    try:
        mean, std = kid(*_arrays(x.images()), data_range=x.bounds)
    except MissingWeightsError as exc:
        return [_skipped("kid", exc, "Inception", ["inception-fid"])]
    return [MetricResult("kid", float(mean), float(std), 1, [float(mean)], "SD over KID subsets")]


def _lpips(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.lpips import lpips

    try:
        values = lpips(*_arrays(x.pair()), data_range=x.bounds)
    except MissingWeightsError as exc:
        return [_skipped("lpips", exc, "LPIPS", ["lpips-vgg", "vgg16"])]
    return [_result("lpips", values)]


def _arrays(pair: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Both batches read whole (float32), for the metrics that do not stream."""
    return np.asarray(pair[0]), np.asarray(pair[1])


def _sf(x: _Inputs) -> list[MetricResult]:
    return [
        _result("sf_real", spatial_frequency(np.asarray(x.real)), "intensity units per pixel"),
        _result("sf_fake", spatial_frequency(np.asarray(x.fake)), "intensity units per pixel"),
    ]


def _frames(images: Any, items: Any) -> np.ndarray:
    """A batch read whole as the frames of one sequence, resampled 2D images put back in their items' shape."""
    return np.asarray(images).reshape(*items.shape[:-2], *images.shape[-2:])


def _temporal(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.temporal import temporal_consistency

    span = x.data_range if not isinstance(x.data_range, tuple) else x.data_range[1] - x.data_range[0]
    (real, fake) = x.images()
    report = temporal_consistency(_frames(real, x.real), _frames(fake, x.fake), data_range=span)
    curves = report.curves()
    note = "items are the frames of one sequence"
    return [
        _result("temporal_diff_w1", [report.diff_wasserstein], f"{note}; data-range units", curves=curves),
        _result("temporal_flow_w1", [report.flow_wasserstein], f"{note}; pixels per frame"),
        _result("warp_error_real", report.real.warp_error, f"{note}; per frame pair, data-range units"),
        _result("warp_error_fake", report.fake.warp_error, f"{note}; per frame pair, data-range units"),
    ]


METRICS: dict[str, _Metric] = {
    "psnr": _Metric("peak signal-to-noise ratio 10 log10(L^2 / MSE) per pair, dB (higher is better)", _psnr, "paired"),
    "ssim": _Metric("structural similarity per pair, Gaussian window sigma 1.5 (1 = identical)", _ssim, "paired"),
    "ssim_inside": _Metric("SSIM averaged inside the mask only", lambda x: _ssim(x, "inside"), "paired"),
    "ssim_outside": _Metric("SSIM averaged outside the mask only", lambda x: _ssim(x, "outside"), "paired"),
    "ms_ssim": _Metric("multi-scale SSIM per pair, 5 scales (1 = identical)", _ms_ssim, "paired"),
    "swd": _Metric(
        "sliced Wasserstein distance x1e3 of Laplacian-pyramid 7x7 patches per level and averaged (lower is better)",
        _swd,
    ),
    "fid": _Metric("Frechet Inception distance of pool features, needs Inception weights (lower is better)", _fid),
    "kid": _Metric("kernel Inception distance, mean and SD over subsets, needs Inception weights", _kid),
    "lpips": _Metric("learned perceptual distance per pair, needs LPIPS weights (lower is better)", _lpips, "paired"),
    "sf": _Metric("spatial frequency sqrt(RF^2 + CF^2) of real and of fake items (sharpness)", _sf, "sets"),
    "temporal": _Metric(
        "temporal consistency of the items as one sequence: W1 of frame differences and flow magnitudes, "
        "flow-warping error of real and fake",
        _temporal,
    ),
}


def available_metrics() -> dict[str, str]:
    """Metric names accepted by `evaluate`, each with a one-line definition."""
    return {name: metric.definition for name, metric in METRICS.items()}


def _resolve_data_range(real_range: tuple[float, float], data_range: DataRange | None) -> tuple[DataRange, DataRange]:
    """(range for PSNR/SSIM, range for the networks) from the real set's (min, max); see `_Inputs`."""
    if data_range is not None:
        given = tuple(float(v) for v in data_range) if isinstance(data_range, (tuple, list)) else float(data_range)
        return given, given
    lo, hi = real_range
    if hi <= lo:
        raise InputError(
            f"the real images are constant ({lo}), so no data range can be taken from them; "
            "give data_range (e.g. --data-range MIN MAX)"
        )
    return hi - lo, (lo, hi)


def check_metric_names(metrics: Sequence[str]) -> list[str]:
    """The metric names without repeats; InputError naming the unknown ones (before any data is read)."""
    names = list(dict.fromkeys(metrics))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise InputError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    return names


def evaluate(
    real: object,
    fake: object,
    *,
    metrics: Sequence[str] = ("psnr", "ssim", "swd"),
    mask: object | None = None,
    data_range: DataRange | None = None,
    resample: str = "pad",
    side: int | None = None,
    progress: Progress | None = None,
) -> list[MetricResult]:
    """Compute `metrics` (names from `available_metrics`) of `fake` against `real`.

    Args:
        real, fake: ``(N, H, W)`` images or ``(N, D, H, W)`` volumes (numpy, memory maps, tensors or
            `medsynth.metrics.items.ItemStack`), in the data's units. Paired metrics (PSNR, SSIM,
            MS-SSIM, LPIPS) compare item i with item i and need equal shapes; distribution metrics (SWD,
            FID, KID, temporal) take sets of any counts and image sizes.
        mask: binary, the shape of one item or of the batch; used by ``ssim_inside`` and
            ``ssim_outside``, which are added when ``ssim`` is asked for with a mask.
        data_range: span ``L`` or ``(min, max)`` (the latter clips both sets, see
            `medsynth.metrics.fidelity`); by default the real set's global ``max - min``.
        resample, side: how the distribution metrics bring images of different sizes to one
            (`medsynth.metrics.resample`: ``"pad"`` or ``"stretch"``) and the common side (default: the
            smaller of the two sets' longer sides). `side` given resamples even images of one size.
        progress: called as ``progress(done, total, label)`` before each metric and once at the end.

    Returns:
        One `MetricResult` per figure, in the order asked. A metric that cannot run on these inputs
        gives NaN figures and its reason in ``error`` (and the note), the others are kept.

    Raises:
        InputError: unknown metric names, batches of the wrong shape, NaN or infinite values, a
            constant real set without `data_range`, a bad resample method or side.
    """
    from medsynth.metrics.resample import check_options, common_side

    names = check_metric_names(metrics)
    real, fake = (x if hasattr(x, "shape") else np.asarray(x) for x in (real, fake))
    check_options(resample, side)
    if mask is not None and "ssim" in names:
        at = names.index("ssim") + 1
        names[at:at] = [n for n in ("ssim_inside", "ssim_outside") if n not in names]
    real_range = finite_range(real, "real", "evaluate")
    finite_range(fake, "fake", "evaluate")
    span, bounds = _resolve_data_range(real_range, data_range)
    if side is None and tuple(real.shape[-2:]) != tuple(fake.shape[-2:]):
        side = common_side(real.shape, fake.shape)
    inputs = _Inputs(real, fake, span, bounds, None if mask is None else np.asarray(mask), side, resample)
    results: list[MetricResult] = []
    for done, name in enumerate(names):
        if progress is not None:
            progress(done, len(names), name)
        try:
            rows = METRICS[name].compute(inputs)
        except InputError as exc:
            rows = [_failed(name, exc)]
        if METRICS[name].kind == "distribution" and inputs.side is not None:
            for row in rows:
                row.note = "; ".join(filter(None, [row.note, inputs.resample_note()]))
                row.details["resampled_side"] = inputs.side
        results.extend(rows)
    if progress is not None:
        progress(len(names), len(names), "done")
    return results


FUSION_SCALE = 255.0
"""The grey scale the fusion figures are computed on: 8-bit, as the fusion literature's images are, so that
SF is comparable with published tables."""

FUSION_METRICS = {
    "sf": f"spatial frequency sqrt(RF^2 + CF^2) of the fused items, 0-{FUSION_SCALE:g} scale (higher: more detail)",
    "ssim_a": "SSIM of the fused item to source A (1 = identical)",
    "ssim_b": "SSIM of the fused item to source B (1 = identical)",
    "ssim": "mean of the SSIM to A and to B per item",
    "scd": "sum of the correlations of differences corr(F - B, A) + corr(F - A, B), range -2 to 2 (higher is better)",
}
"""What `evaluate_fusion` reports, in its order, with definitions (for `to_json`)."""


def _to_fusion_scale(x: Any, bounds: tuple[float, float]) -> np.ndarray:
    """A batch in float64, ``bounds`` mapped linearly onto ``[0, FUSION_SCALE]`` and clipped there."""
    lo, hi = bounds
    return np.clip((np.asarray(x, dtype=np.float64) - lo) * (FUSION_SCALE / (hi - lo)), 0.0, FUSION_SCALE)


def _source_bounds(x: Any, name: str, given: DataRange | None) -> tuple[float, float]:
    """The caller's ``(min, max)`` of a source set, else its global minimum and maximum; InputError when constant."""
    if given is not None:
        return data_range_bounds(given)
    lo, hi = finite_range(x, name, "evaluate_fusion")
    if hi <= lo:
        raise InputError(
            f"evaluate_fusion: {name} is constant ({lo}), so no intensity range can be taken from it; "
            f"give range_{name[-1]}=(min, max)"
        )
    return lo, hi


def evaluate_fusion(
    fused: object,
    source_a: object,
    source_b: object,
    *,
    range_a: DataRange | None = None,
    range_b: DataRange | None = None,
    progress: Progress | None = None,
) -> list[MetricResult]:
    """SF, SSIM to each source and SCD of `fused` images made from `source_a` and `source_b`, one value per item.

    Args:
        fused, source_a, source_b: ``(N, H, W)`` images or ``(N, D, H, W)`` volumes of one shape; item i of
            `fused` is the fusion of item i of each source.
        range_a, range_b: the sources' intensity ranges (span or ``(min, max)``); by default each set's
            global minimum and maximum. The fused images are in source A's units (as ``kgan-fusion``
            writes them), so they share `range_a`.

    Every set is mapped by its range onto ``[0, 255]`` (`FUSION_SCALE`, values outside clipped) before
    measuring: sources of different units (an MR image and a probability map) are then compared on one
    scale, as the 8-bit images of fusion papers are; SSIM uses the span 255.

    Returns:
        One `MetricResult` per entry of `FUSION_METRICS`, in that order.

    Raises:
        InputError: batches of other shapes or counts, NaN or infinite values, a constant source without a range.
    """
    arrays = {"fused": fused, "source_a": source_a, "source_b": source_b}
    shapes = {name: tuple(np.shape(x)) for name, x in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise InputError(
            "evaluate_fusion compares item i of the fused set with item i of each source, but their shapes differ "
            f"({', '.join(f'{name} {shape}' for name, shape in shapes.items())}); give co-registered images of one grid"
        )
    finite_range(fused, "fused", "evaluate_fusion")
    bounds_a = _source_bounds(source_a, "source_a", range_a)
    f = _to_fusion_scale(fused, bounds_a)
    a = _to_fusion_scale(source_a, bounds_a)
    b = _to_fusion_scale(source_b, _source_bounds(source_b, "source_b", range_b))
    from medsynth.metrics.fidelity import ssim

    steps = [
        ("sf", lambda: spatial_frequency(f)),
        ("ssim_a", lambda: ssim(a, f, data_range=FUSION_SCALE)),
        ("ssim_b", lambda: ssim(b, f, data_range=FUSION_SCALE)),
        ("scd", lambda: scd(f, a, b)),
    ]
    values: dict[str, np.ndarray] = {}
    for done, (name, compute) in enumerate(steps):
        if progress is not None:
            progress(done, len(steps), name)
        values[name] = np.asarray(compute())
    if progress is not None:
        progress(len(steps), len(steps), "done")
    values["ssim"] = (values["ssim_a"] + values["ssim_b"]) / 2
    note = f"0-{FUSION_SCALE:g} scale"
    return [_result(name, values[name], note if name == "sf" else "") for name in FUSION_METRICS]


def _versions() -> dict[str, str]:
    packages = ("napari-medsynth", "numpy", "scipy", "scikit-image", "torch", "torchmetrics")
    return {package: package_version(package) for package in packages}


def _json_safe(value: Any) -> Any:
    """NaN and infinity become null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def check_results_path(path: str | os.PathLike[str]) -> Path:
    """`path` when results can be written there: a file (new or replaced) in an existing, writable folder.

    A typo in the path should not create folders. InputError naming the path and the fix otherwise.
    """
    return check_new_file(path, "results file", overwrite=True, create_parents=False)


def _write_results(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` atomically to `path` (see `check_results_path`)."""
    return write_text(check_results_path(path), text)


def to_json(
    results: Sequence[MetricResult], path: str | os.PathLike[str], definitions: dict[str, str] | None = None
) -> Path:
    """Write the results, the metric definitions (by default `available_metrics`; `FUSION_METRICS` for
    `evaluate_fusion`'s) and the software versions as JSON (NaN -> null)."""
    document = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "definitions": available_metrics() if definitions is None else definitions,
        "results": [asdict(r) for r in results],
    }
    return _write_results(path, json.dumps(_json_safe(document), indent=2) + "\n")


def to_csv(results: Sequence[MetricResult], path: str | os.PathLike[str]) -> Path:
    """Write one row per result: metric, mean, sd, n, note and the per-item values joined by ``;``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["metric", "mean", "sd", "n", "note", "values", "error"])
    for r in results:
        values = ";".join(repr(v) for v in r.values)
        writer.writerow([r.name, repr(r.mean), repr(r.sd), r.n, r.note, values, r.error])
    return _write_results(path, buffer.getvalue())
