"""Metrics: paired fidelity, distribution distances, sharpness, temporal consistency, reader studies.

Everything is importable from here, but each name loads its module only when first used (module
``__getattr__``), so ``import medsynth.metrics`` costs nothing and torch is imported only by the
metrics that need it (FID, KID, LPIPS and the torch-based fidelity metrics).
docs/metrics.md gives each metric's definition and the reference it is validated against.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "psnr": "fidelity",
    "ssim": "fidelity",
    "ms_ssim": "fidelity",
    "fid": "distribution",
    "kid": "distribution",
    "lpips": "lpips",
    "swd": "swd",
    "spatial_frequency": "sharpness",
    "scd": "sharpness",
    "temporal_consistency": "temporal",
    "TemporalReport": "temporal",
    "hyperscore": "hyperscore",
    "aggregate_v": "hyperscore",
    "reader_study": "reader_study",
    "inter_rater_kappa": "reader_study",
    "evaluate": "evaluate",
    "MetricResult": "evaluate",
    "available_metrics": "evaluate",
    "to_json": "evaluate",
    "to_csv": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
