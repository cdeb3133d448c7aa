"""Command-line flags generated from a settings class declared with `medsynth.settings.setting`.

Each field becomes ``--field-name`` with the field's type, choices and help line; the help adds the
valid values and the default from the declaration, so nothing is written twice. A flag that is not
given stays None, so that a config file's value (or the declared default) applies; ranges are
checked where the settings are parsed, which names every bad value at once.
"""

from __future__ import annotations

import argparse
from typing import Any

from medsynth.settings import SettingInfo, describe, valid_values

_METAVARS = {int: "N", float: "X", str: "TEXT"}


def add_setting_flags(parser: argparse.ArgumentParser, settings_cls: type, title: str) -> None:
    """One flag per field of `settings_cls`, in an argument group headed `title`."""
    group = parser.add_argument_group(title)
    for info in describe(settings_cls):
        group.add_argument(
            "--" + info.name.replace("_", "-"),
            dest=info.name,
            type=info.type,
            choices=info.choices,
            metavar=None if info.choices is not None else _METAVARS[info.type],
            help=flag_help(info),
        )


def flag_help(info: SettingInfo) -> str:
    """The field's help line, then its valid values and its default."""
    valid = valid_values(info)
    return f"{info.help} ({valid + '; ' if valid else ''}default {info.default})".replace("%", "%%")


def given_settings(args: argparse.Namespace, settings_cls: type) -> dict[str, Any]:
    """The fields of `settings_cls` given on the command line, by name."""
    return {info.name: getattr(args, info.name) for info in describe(settings_cls) if getattr(args, info.name) is not None}
