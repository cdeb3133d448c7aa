"""Metrics: paired fidelity, distribution distances, sharpness, temporal consistency, reader studies.

Everything is importable from here. Modules that need torch or scikit-image (fidelity, FID/KID,
sharpness, temporal) load on first use (module ``__getattr__``), so ``import medsynth.metrics``
does not import torch. The functions named like their own module (`swd`, `hyperscore`,
`reader_study`, `evaluate`) are bound at import, because a submodule import would otherwise replace
the function with the module of the same name; they need only numpy and scipy. LPIPS is not
re-exported for the same reason and because it needs torch: use ``medsynth.metrics.lpips.lpips``.
docs/metrics.md gives each metric's definition and the reference it is validated against.
"""

from __future__ import annotations

import importlib
from typing import Any

from medsynth.metrics.evaluate import MetricResult, available_metrics, evaluate, evaluate_fusion, to_csv, to_json
from medsynth.metrics.hyperscore import aggregate_v, hyperscore
from medsynth.metrics.reader_study import inter_rater_kappa, reader_study
from medsynth.metrics.swd import swd

_LAZY = {
    "psnr": "fidelity",
    "ssim": "fidelity",
    "ms_ssim": "fidelity",
    "fid": "distribution",
    "kid": "distribution",
    "spatial_frequency": "sharpness",
    "scd": "sharpness",
    "temporal_consistency": "temporal",
    "TemporalReport": "temporal",
}

__all__ = [
    "MetricResult",
    "TemporalReport",
    "aggregate_v",
    "available_metrics",
    "evaluate",
    "evaluate_fusion",
    "fid",
    "hyperscore",
    "inter_rater_kappa",
    "kid",
    "ms_ssim",
    "psnr",
    "reader_study",
    "scd",
    "spatial_frequency",
    "ssim",
    "swd",
    "temporal_consistency",
    "to_csv",
    "to_json",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
