"""`TrainConfig`: everything a training run needs besides the data, as the CLI, a config file or the widget give it."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsynth.errors import SettingsError
from medsynth.settings import parse, setting

NORMALIZATIONS = ("percentile", "window")
SEED_LIMIT = 2**32
"""Seeds are 0 <= seed < SEED_LIMIT: numpy's `SeedSequence` (step seeds, batch order) refuses negative
seeds and `torch.manual_seed` overflows beyond 64 bits; 32 bits is the range seeds conventionally take."""
REQUIRED = {"recipe": "--recipe NAME", "out_dir": "--out DIR"}
"""The keys a run cannot do without, with the command-line flags that give them."""


@dataclass
class RunOptions:
    """The run options every user interface offers, with their valid ranges.

    `TrainConfig.validate` checks a config's values of these fields against the declared ranges,
    and the Train widget shows them as its form, so both accept the same values.
    """

    steps: int = setting(2000, "Total generator updates; a resumed run continues up to this step", min=1)
    sample_every: int = setting(100, "Steps between preview samples (0: none)", min=0)
    checkpoint_every: int = setting(500, "Steps between checkpoints", min=1)
    log_every: int = setting(10, "Steps between progress reports (points of the loss plot)", min=1)
    slice_axis: int = setting(
        0, "Axis of 3D volumes to slice: 0 axial (z), 1 coronal (y), 2 sagittal (x)", choices=(0, 1, 2)
    )
    seed: int = setting(0, "Random seed (the same seed repeats a CPU run)", min=0, max=SEED_LIMIT - 1)


@dataclass
class TrainConfig:
    """One training run.

    `settings` are the recipe's settings by name (strings are converted); they are validated with
    `medsynth.settings.parse` against the recipe's settings class before training starts.
    """

    recipe: str
    out_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    steps: int = RunOptions.steps
    """Total generator updates; a resumed run continues up to this step."""
    device: str = "auto"
    """``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``."""
    seed: int = RunOptions.seed
    checkpoint_every: int = RunOptions.checkpoint_every
    sample_every: int = RunOptions.sample_every
    """Steps between preview samples (0: none)."""
    log_every: int = RunOptions.log_every
    resume: Path | None = None
    slice_axis: int = RunOptions.slice_axis
    """Axis of 3D volumes to slice: 0 = z (axial), 1 = y (coronal), 2 = x (sagittal)."""
    normalization: str = "percentile"
    """``"percentile"``: clip at `percentiles` of the data; ``"window"``: clip at `window` (CT)."""
    percentiles: tuple[float, float] = (0.5, 99.5)
    window: tuple[float, float] | None = None
    """(center, width) in data units, e.g. (40, 400) HU for soft tissue; required for ``"window"``."""
    augment: bool | None = None
    """Augment (each recipe's own, see `Recipe.augment`); None: on when the data has fewer than `SMALL_DATA` items."""
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
        try:
            parse(RunOptions, {f.name: getattr(self, f.name) for f in dataclasses.fields(RunOptions)})
        except SettingsError as exc:
            problems.append(str(exc))
        if self.preview_samples < 1:
            problems.append(f"preview_samples={self.preview_samples!r}: must be at least 1")
        if self.normalization not in NORMALIZATIONS:
            problems.append(f"normalization={self.normalization!r}: must be one of {', '.join(NORMALIZATIONS)}")
        if self.normalization == "window" and (self.window is None or len(self.window) != 2 or self.window[1] <= 0):
            problems.append(f"window={self.window!r}: must be (center, width) with width > 0 for normalization='window'")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            problems.append(f"percentiles={self.percentiles!r}: must be (lower, upper) with 0 <= lower < upper <= 100")
        if not 0.0 <= self.min_foreground < 1.0:
            problems.append(f"min_foreground={self.min_foreground!r}: must be in [0, 1)")
        if problems:
            raise SettingsError("bad training configuration: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TrainConfig:
        """A validated config from a config file's table merged with command-line options.

        SettingsError naming every unknown key, every missing one (with its command-line flag), every
        value of the wrong type (with the type expected), or, once the types are right, every value
        out of range (`validate`).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(
                f"unknown configuration key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        missing = [f"{flag} (or `{key}` in the config file)" for key, flag in REQUIRED.items() if key not in values]
        if missing:
            raise SettingsError(f"the training run needs {' and '.join(missing)}")
        mistyped = [
            f"{key}={value!r} (expected {VALUE_TYPES[key][1]})"
            for key, value in values.items()
            if not VALUE_TYPES[key][0](value)
        ]
        if mistyped:
            raise SettingsError("wrong type of configuration value(s): " + "; ".join(mistyped))
        config = cls(**values)
        config.validate()
        return config


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) and str(value) != ""


def _pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value)


def _or_none(accepts: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or accepts(value)


VALUE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "recipe": (_text, "a recipe name, see `medsynth recipes`"),
    "out_dir": (_path, "a folder path"),
    "settings": (lambda value: isinstance(value, dict), "a table of recipe settings, e.g. [settings] batch_size = 16"),
    "steps": (_whole, "a whole number"),
    "device": (_text, "auto, cpu, cuda, cuda:N or mps"),
    "seed": (_whole, "a whole number"),
    "checkpoint_every": (_whole, "a whole number"),
    "sample_every": (_whole, "a whole number"),
    "log_every": (_whole, "a whole number"),
    "resume": (_or_none(_path), "a checkpoint file path"),
    "slice_axis": (_whole, "0, 1 or 2"),
    "normalization": (_text, f"one of {', '.join(NORMALIZATIONS)}"),
    "percentiles": (_pair, "[lower, upper], two numbers"),
    "window": (_or_none(_pair), "[center, width], two numbers"),
    "augment": (_or_none(lambda value: isinstance(value, bool)), "true or false"),
    "min_foreground": (_number, "a number"),
    "preview_samples": (_whole, "a whole number"),
    "mixed_precision": (lambda value: isinstance(value, bool), "true or false"),
}
"""For each `TrainConfig` field: what a config file's value must be, and how to say so."""
