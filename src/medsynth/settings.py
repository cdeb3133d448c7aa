"""Typed settings declared once, rendered by the CLI and the widget, stored in checkpoints.

A settings class is a plain dataclass whose fields are declared with `setting()`::

    @dataclass
    class DCGANSettings:
        lr: float = setting(2e-4, "Adam learning rate", min=1e-6, max=1e-1)
        resolution: int = setting(64, "Training side length in pixels", choices=(64, 128))

`describe()` lists the fields for a user interface, `parse()` validates a mapping (from the CLI's
``--set key=value``, a config file or a widget) and reports every bad key at once.
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


def describe(settings_cls: type) -> list[SettingInfo]:
    """The fields of a settings dataclass, in declaration order."""
    hints = typing.get_type_hints(settings_cls)
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
        for f in dataclasses.fields(settings_cls)
    ]


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
