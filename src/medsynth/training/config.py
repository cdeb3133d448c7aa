"""`TrainConfig`: everything a training run needs besides the data, as the CLI, a config file or the widget give it."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsynth.data.normalization import NormalizationOptions
from medsynth.errors import SettingsError
from medsynth.settings import SettingInfo, describe, parse, setting, valid_values

SEED_LIMIT = 2**32
"""Seeds are 0 <= seed < SEED_LIMIT: numpy's `SeedSequence` (step seeds, batch order) refuses negative
seeds and `torch.manual_seed` overflows beyond 64 bits; 32 bits is the range seeds conventionally take."""
REQUIRED = {"recipe": "--recipe NAME", "out_dir": "--out DIR"}
"""The keys a run cannot do without, with the command-line flags that give them."""


@dataclass(kw_only=True)
class RunOptions:
    """The run options every user interface offers, with their valid ranges.

    `TrainConfig` takes them as its own fields, `TrainConfig.validate` checks them against the
    declared ranges, the Train widget shows them as its form and ``medsynth train`` as its flags, so
    all accept the same values.
    """

    steps: int = setting(2000, "Total generator updates; a resumed run continues up to this step", min=1)
    sample_every: int = setting(100, "Steps between preview samples (0: none)", min=0)
    checkpoint_every: int = setting(500, "Steps between checkpoints", min=1)
    log_every: int = setting(10, "Steps between progress reports (points of the loss plot)", min=1)
    slice_axis: int = setting(
        0, "Axis of 3D volumes to slice: 0 axial (z), 1 coronal (y), 2 sagittal (x)", choices=(0, 1, 2)
    )
    seed: int = setting(0, "Random seed (the same seed repeats a CPU run)", min=0, max=SEED_LIMIT - 1)


DECLARED_PARTS = (RunOptions, NormalizationOptions)
"""The settings classes whose fields `TrainConfig` takes as its own, each declared once with its ranges."""


@dataclass
class TrainConfig(RunOptions, NormalizationOptions):
    """One training run: the fields below, the run options (`RunOptions`) and the normalisation
    (`NormalizationOptions`), keyword arguments all but `recipe`, `out_dir` and `settings`.

    `settings` are the recipe's settings by name (strings are converted); they are validated with
    `medsynth.settings.parse` against the recipe's settings class before training starts.
    """

    recipe: str
    out_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    """``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``."""
    resume: Path | None = None
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

    def validate(self) -> None:
        """SettingsError naming every bad field."""
        problems = []
        for part in DECLARED_PARTS:
            try:
                parse(part, {f.name: getattr(self, f.name) for f in dataclasses.fields(part)})
            except SettingsError as exc:
                problems.append(str(exc))
        problems += self.percentile_problems()
        if self.preview_samples < 1:
            problems.append(f"preview_samples={self.preview_samples!r}: must be at least 1")
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


def _or_none(accepts: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or accepts(value)


def _declared_type(info: SettingInfo) -> tuple[Callable[[Any], bool], str]:
    """What a config file's value of a declared setting must be (its range is checked by `TrainConfig.validate`)."""
    accepts = {int: _whole, float: _number, str: _text}[info.type]
    if info.choices is not None:
        return accepts, valid_values(info)
    return accepts, {int: "a whole number", float: "a number", str: "text"}[info.type]


VALUE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "recipe": (_text, "a recipe name, see `medsynth recipes`"),
    "out_dir": (_path, "a folder path"),
    "settings": (lambda value: isinstance(value, dict), "a table of recipe settings, e.g. [settings] batch_size = 16"),
    "device": (_text, "auto, cpu, cuda, cuda:N or mps"),
    "resume": (_or_none(_path), "a checkpoint file path"),
    "augment": (_or_none(lambda value: isinstance(value, bool)), "true or false"),
    "min_foreground": (_number, "a number"),
    "preview_samples": (_whole, "a whole number"),
    "mixed_precision": (lambda value: isinstance(value, bool), "true or false"),
    **{info.name: _declared_type(info) for part in DECLARED_PARTS for info in describe(part)},
}
"""For each `TrainConfig` field: what a config file's value must be, and how to say so."""
