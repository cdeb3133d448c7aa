"""Typed settings declared once, rendered by the CLI and the widget, stored in checkpoints.

A settings class is a plain dataclass whose fields are declared with `setting()`::

    @dataclass
    class DCGANSettings:
        lr: float = setting(2e-4, "Adam learning rate", min=1e-6, max=1e-1)
        resolution: int = setting(64, "Training side length in pixels", choices=(64, 128))

`describe()` lists the fields for a user interface, `parse()` validates a mapping (from the CLI's
``--set key=value``, a config file or a widget) and reports every bad key at once. Settings shared by
several classes are declared once in a base class (e.g. the GAN optimiser's in
`medsynth.training.gan_optimizer`); a subclass gives one of them another default with `with_default`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medsynth.errors import SettingsError


@dataclass(frozen=True)
class SettingInfo:
    """One setting as a user interface shows it."""

    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """Declare a dataclass field with its documentation and valid range."""
    meta = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=meta)


def with_default(base: type, name: str, default: Any, why: str = "") -> Any:
    """Setting `name` of settings class `base` with another `default`; `why` joins its help line.

    For a subclass of `base`, or a class that offers a few of `base`'s settings.
    """
    meta = next(f for f in dataclasses.fields(base) if f.name == name).metadata
    help = f"{meta['help']} ({why})" if why else meta["help"]
    return setting(default, help, min=meta["min"], max=meta["max"], choices=meta["choices"])


def describe(settings_cls: type) -> list[SettingInfo]:
    """The fields of a settings dataclass: its own in declaration order, then those declared in its base classes.

    A field counts as declared by the most basic class that has it (a redeclared default stays there), so
    a recipe's form and listing start with what is particular to it, not with shared optimiser fields.
    """
    hints = typing.get_type_hints(settings_cls)
    depth = {}  # field name -> position in the MRO of the most basic class declaring it
    for position, base in enumerate(settings_cls.__mro__):
        if dataclasses.is_dataclass(base):
            depth.update((f.name, position) for f in dataclasses.fields(base))
    fields = sorted(dataclasses.fields(settings_cls), key=lambda f: depth[f.name])
    return [
        SettingInfo(
            name=f.name,
            type=hints[f.name],
            default=f.default,
            help=f.metadata.get("help", ""),
            min=f.metadata.get("min"),
            max=f.metadata.get("max"),
            choices=f.metadata.get("choices"),
        )
        for f in fields
    ]


def valid_values(info: SettingInfo) -> str:
    """The values `info` accepts, in words (``one of 64, 128``, ``1e-06 to 0.1``, ``at least 1``); empty when any."""
    if info.choices is not None:
        return f"one of {', '.join(map(str, info.choices))}"
    if info.min is not None and info.max is not None:
        return f"{_number(info.min)} to {_number(info.max)}"
    if info.min is not None:
        return f"at least {_number(info.min)}"
    if info.max is not None:
        return f"at most {_number(info.max)}"
    return ""


def _number(value: float) -> str:
    """Whole bounds in full (seeds up to 4294967295), others in short form (1e-06)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse(settings_cls: type, values: Mapping[str, Any] | None = None) -> Any:
    """Build a settings instance from `values`, converting strings; raise one error naming every bad key."""
    values = dict(values or {})
    infos = {info.name: info for info in describe(settings_cls)}
    problems = [f"unknown setting {key!r} (valid: {', '.join(infos)})" for key in values if key not in infos]
    kwargs = {}
    for key, raw in values.items():
        if key not in infos:
            continue
        try:
            kwargs[key] = _check(infos[key], _convert(infos[key].type, raw))
        except ValueError as exc:
            problems.append(f"{key}={raw!r}: {exc}")
    if problems:
        raise SettingsError(f"bad settings for {settings_cls.__name__}: " + "; ".join(problems))
    return settings_cls(**kwargs)


def to_dict(settings: Any) -> dict[str, Any]:
    """JSON-ready mapping of a settings instance (stored in checkpoints)."""
    return dataclasses.asdict(settings)


def _convert(kind: type, raw: Any) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("expected a whole number")
        try:
            return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a whole number") from None
    if kind is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value
    if kind is str:
        return str(raw)
    raise ValueError(f"settings of type {kind} are not supported")


def _check(info: SettingInfo, value: Any) -> Any:
    if info.choices is not None and value not in info.choices:
        raise ValueError(f"must be one of {', '.join(map(str, info.choices))}")
    if info.min is not None and value < info.min:
        raise ValueError(f"must be at least {info.min}")
    if info.max is not None and value > info.max:
        raise ValueError(f"must be at most {info.max}")
    return value
