"""`TrainConfig`: everything a training run needs besides the data, as the CLI, a config file or the widget give it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsynth.errors import SettingsError

NORMALIZATIONS = ("percentile", "window")


@dataclass
class TrainConfig:
    """One training run.

    `settings` are the recipe's settings by name (strings are converted); they are validated with
    `medsynth.settings.parse` against the recipe's settings class before training starts.
    """

    recipe: str
    out_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    """Total generator updates; a resumed run continues up to this step."""
    device: str = "auto"
    """``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``."""
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 100
    """Steps between preview samples (0: none)."""
    log_every: int = 10
    resume: Path | None = None
    slice_axis: int = 0
    """Axis of 3D volumes to slice: 0 = z (axial), 1 = y (coronal), 2 = x (sagittal)."""
    normalization: str = "percentile"
    """``"percentile"``: clip at `percentiles` of the data; ``"window"``: clip at `window` (CT)."""
    percentiles: tuple[float, float] = (0.5, 99.5)
    window: tuple[float, float] | None = None
    """(center, width) in data units, e.g. (40, 400) HU for soft tissue; required for ``"window"``."""
    augment: bool | None = None
    """Flips and small affine transforms; None: on when the data has fewer than `SMALL_DATA` items."""
    min_foreground: float = 0.05
    """Slices with a smaller fraction of foreground pixels are skipped (see `medsynth.data.datasets`)."""
    preview_samples: int = 8
    mixed_precision: bool = True
    """bfloat16 autocast on CUDA devices that support it; ignored elsewhere."""

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.resume = Path(self.resume) if self.resume is not None else None
        self.percentiles = tuple(float(p) for p in self.percentiles)
        self.window = tuple(float(w) for w in self.window) if self.window is not None else None

    def validate(self) -> None:
        """SettingsError naming every bad field."""
        problems = []
        for name in ("steps", "checkpoint_every", "log_every", "preview_samples"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be at least 1")
        if self.sample_every < 0:
            problems.append(f"sample_every={self.sample_every!r} must be 0 (no samples) or more")
        if self.slice_axis not in (0, 1, 2):
            problems.append(f"slice_axis={self.slice_axis!r} must be 0 (axial), 1 (coronal) or 2 (sagittal)")
        if self.normalization not in NORMALIZATIONS:
            problems.append(f"normalization={self.normalization!r} must be one of {', '.join(NORMALIZATIONS)}")
        if self.normalization == "window" and (self.window is None or len(self.window) != 2 or self.window[1] <= 0):
            problems.append(f"window={self.window!r} must be (center, width) with width > 0 for normalization='window'")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            problems.append(f"percentiles={self.percentiles!r} must be (lower, upper) with 0 <= lower < upper <= 100")
        if not 0.0 <= self.min_foreground < 1.0:
            problems.append(f"min_foreground={self.min_foreground!r} must be in [0, 1)")
        if problems:
            raise SettingsError("bad training configuration: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TrainConfig:
        """From a config file's table; SettingsError naming every unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(
                f"unknown configuration key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        missing = [name for name in ("recipe", "out_dir") if name not in values]
        if missing:
            raise SettingsError(f"the configuration needs {' and '.join(missing)}")
        return cls(**values)
