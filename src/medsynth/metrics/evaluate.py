"""Evaluate a synthetic image set against a real one with several metrics, and save the results.

`evaluate` is what the CLI (``medsynth evaluate``) and the Metrics widget call: it takes two batches,
``(N, H, W)`` images or ``(N, D, H, W)`` volumes, computes the chosen metrics and returns one
`MetricResult` per reported figure (mean, SD, n, the per-item values and a note). `to_json` and
`to_csv` write them atomically; the JSON also holds each metric's definition and the versions of
the software that computed it.

Unless given, the data range is taken from the REAL set's global minimum and maximum (over all items,
never one image): PSNR, SSIM and MS-SSIM use the span ``max - min`` without clipping; FID, KID and
LPIPS map ``[min, max]`` onto their networks' [0, 1] input (fake values outside it are clipped).
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
from medsynth.metrics.inputs import DataRange, finite_array
from medsynth.metrics.sharpness import spatial_frequency
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


@dataclass(frozen=True)
class _Inputs:
    real: np.ndarray
    fake: np.ndarray
    data_range: DataRange
    """For PSNR and SSIM: the caller's range, or the real set's span (no clipping)."""
    bounds: DataRange
    """For the networks (FID, KID, LPIPS), which map the data onto [0, 1]: the caller's range, or the real
    set's (min, max)."""
    mask: np.ndarray | None


@dataclass(frozen=True)
class _Metric:
    definition: str
    compute: Callable[[_Inputs], list[MetricResult]]
    paired: bool = False


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

    return [_result("psnr", psnr(x.real, x.fake, data_range=x.data_range), data_range=x.data_range)]


def _ssim(x: _Inputs, mode: str | None = None) -> list[MetricResult]:
    from medsynth.metrics.fidelity import ssim

    if mode is None:
        return [_result("ssim", ssim(x.real, x.fake, data_range=x.data_range), data_range=x.data_range)]
    if x.mask is None:
        raise InputError(f"ssim_{mode} needs a mask; give mask= (or --mask PATH)")
    values = ssim(x.real, x.fake, data_range=x.data_range, mask=x.mask, mask_mode=mode)
    return [_result(f"ssim_{mode}", values, data_range=x.data_range)]


def _ms_ssim(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.fidelity import ms_ssim

    return [_result("ms_ssim", ms_ssim(x.real, x.fake, data_range=x.data_range), data_range=x.data_range)]


def _swd(x: _Inputs) -> list[MetricResult]:
    levels = swd(x.real, x.fake)
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
    return MetricResult(name, float("nan"), float("nan"), 0, [], note, {"error": str(exc)})


def _fid(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.distribution import fid

    try:
        value = fid(x.real, x.fake, data_range=x.bounds)
    except MissingWeightsError as exc:
        return [_skipped("fid", exc, "Inception", ["inception-fid"])]
    return [MetricResult("fid", float(value), float("nan"), 1, [float(value)], "one figure for the whole sets")]


def _kid(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.distribution import kid

    try:
        mean, std = kid(x.real, x.fake, data_range=x.bounds)
    except MissingWeightsError as exc:
        return [_skipped("kid", exc, "Inception", ["inception-fid"])]
    return [MetricResult("kid", float(mean), float(std), 1, [float(mean)], "SD over KID subsets")]


def _lpips(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.lpips import lpips

    try:
        values = lpips(x.real, x.fake, data_range=x.bounds)
    except MissingWeightsError as exc:
        return [_skipped("lpips", exc, "LPIPS", ["lpips-vgg", "vgg16"])]
    return [_result("lpips", values)]


def _sf(x: _Inputs) -> list[MetricResult]:
    return [
        _result("sf_real", spatial_frequency(x.real), "intensity units per pixel"),
        _result("sf_fake", spatial_frequency(x.fake), "intensity units per pixel"),
    ]


def _temporal(x: _Inputs) -> list[MetricResult]:
    from medsynth.metrics.temporal import temporal_consistency

    span = x.data_range if not isinstance(x.data_range, tuple) else x.data_range[1] - x.data_range[0]
    report = temporal_consistency(x.real, x.fake, data_range=span)
    curves = report.curves()
    note = "items are the frames of one sequence"
    return [
        _result("temporal_diff_w1", [report.diff_wasserstein], f"{note}; data-range units", curves=curves),
        _result("temporal_flow_w1", [report.flow_wasserstein], f"{note}; pixels per frame"),
        _result("warp_error_real", report.real.warp_error, f"{note}; per frame pair, data-range units"),
        _result("warp_error_fake", report.fake.warp_error, f"{note}; per frame pair, data-range units"),
    ]


METRICS: dict[str, _Metric] = {
    "psnr": _Metric("peak signal-to-noise ratio 10 log10(L^2 / MSE) per pair, dB (higher is better)", _psnr, True),
    "ssim": _Metric("structural similarity per pair, Gaussian window sigma 1.5 (1 = identical)", _ssim, True),
    "ssim_inside": _Metric("SSIM averaged inside the mask only", lambda x: _ssim(x, "inside"), True),
    "ssim_outside": _Metric("SSIM averaged outside the mask only", lambda x: _ssim(x, "outside"), True),
    "ms_ssim": _Metric("multi-scale SSIM per pair, 5 scales (1 = identical)", _ms_ssim, True),
    "swd": _Metric(
        "sliced Wasserstein distance x1e3 of Laplacian-pyramid 7x7 patches per level and averaged (lower is better)",
        _swd,
    ),
    "fid": _Metric("Frechet Inception distance of pool features, needs Inception weights (lower is better)", _fid),
    "kid": _Metric("kernel Inception distance, mean and SD over subsets, needs Inception weights", _kid),
    "lpips": _Metric("learned perceptual distance per pair, needs LPIPS weights (lower is better)", _lpips, True),
    "sf": _Metric("spatial frequency sqrt(RF^2 + CF^2) of real and of fake items (sharpness)", _sf),
    "temporal": _Metric(
        "temporal consistency of the items as one sequence: W1 of frame differences and flow magnitudes, "
        "flow-warping error of real and fake",
        _temporal,
    ),
}


def available_metrics() -> dict[str, str]:
    """Metric names accepted by `evaluate`, each with a one-line definition."""
    return {name: metric.definition for name, metric in METRICS.items()}


def _resolve_data_range(real: np.ndarray, data_range: DataRange | None) -> tuple[DataRange, DataRange]:
    """(range for PSNR/SSIM, range for the networks); see `_Inputs`."""
    if data_range is not None:
        given = tuple(float(v) for v in data_range) if isinstance(data_range, (tuple, list)) else float(data_range)
        return given, given
    lo, hi = float(real.min()), float(real.max())
    if hi <= lo:
        raise InputError(
            f"the real images are constant ({lo}), so no data range can be taken from them; "
            "give data_range (e.g. --data-range MIN MAX)"
        )
    return hi - lo, (lo, hi)


def evaluate(
    real: object,
    fake: object,
    *,
    metrics: Sequence[str] = ("psnr", "ssim", "swd"),
    mask: object | None = None,
    data_range: DataRange | None = None,
    progress: Progress | None = None,
) -> list[MetricResult]:
    """Compute `metrics` (names from `available_metrics`) of `fake` against `real`.

    Args:
        real, fake: ``(N, H, W)`` images or ``(N, D, H, W)`` volumes (numpy or tensors), in the data's
            units. Paired metrics (PSNR, SSIM, MS-SSIM, LPIPS) compare item i with item i and need
            equal shapes; distribution metrics (SWD, FID, KID) only equal item shapes.
        mask: binary, the shape of one item or of the batch; used by ``ssim_inside`` and
            ``ssim_outside``, which are added when ``ssim`` is asked for with a mask.
        data_range: span ``L`` or ``(min, max)`` (the latter clips both sets, see
            `medsynth.metrics.fidelity`); by default the real set's global ``max - min``.
        progress: called as ``progress(done, total, label)`` before each metric and once at the end.

    Returns:
        One `MetricResult` per figure, in the order asked. FID, KID and LPIPS without their weights
        give a result with NaN mean and a note saying why and where to put the weights.
    """
    names = list(dict.fromkeys(metrics))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise InputError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if mask is not None and "ssim" in names:
        at = names.index("ssim") + 1
        names[at:at] = [n for n in ("ssim_inside", "ssim_outside") if n not in names]
    real_arr, fake_arr = finite_array(real, "real", "evaluate"), finite_array(fake, "fake", "evaluate")
    if real_arr.shape[1:] != fake_arr.shape[1:]:
        raise InputError(
            f"real items have shape {real_arr.shape[1:]} but fake items {fake_arr.shape[1:]}; resample to one shape"
        )
    paired = [n for n in names if METRICS[n].paired]
    if paired and len(real_arr) != len(fake_arr):
        raise InputError(
            f"paired metrics {paired} compare item i with item i, but there are {len(real_arr)} real and "
            f"{len(fake_arr)} fake items; give equal counts or only distribution metrics (swd, fid, kid)"
        )
    span, bounds = _resolve_data_range(real_arr, data_range)
    inputs = _Inputs(real_arr, fake_arr, span, bounds, None if mask is None else np.asarray(mask))
    results: list[MetricResult] = []
    for done, name in enumerate(names):
        if progress is not None:
            progress(done, len(names), name)
        results.extend(METRICS[name].compute(inputs))
    if progress is not None:
        progress(len(names), len(names), "done")
    return results


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


def _write_results(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` atomically to `path`, a file in an existing folder (a typo should not create folders)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name to write the results to")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent} does not exist; create the folder first or choose another output path")
    return write_text(path, text)


def to_json(results: Sequence[MetricResult], path: str | os.PathLike[str]) -> Path:
    """Write the results, the metric definitions and the software versions as JSON (NaN -> null)."""
    document = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "definitions": available_metrics(),
        "results": [asdict(r) for r in results],
    }
    return _write_results(path, json.dumps(_json_safe(document), indent=2) + "\n")


def to_csv(results: Sequence[MetricResult], path: str | os.PathLike[str]) -> Path:
    """Write one row per result: metric, mean, sd, n, note and the per-item values joined by ``;``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["metric", "mean", "sd", "n", "note", "values"])
    for r in results:
        writer.writerow([r.name, repr(r.mean), repr(r.sd), r.n, r.note, ";".join(repr(v) for v in r.values)])
    return _write_results(path, buffer.getvalue())
