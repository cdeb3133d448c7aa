"""A settings dataclass as a magicgui form: the one place where widget values become typed settings.

Any dataclass declared with `medsynth.settings.setting` renders from `medsynth.settings.describe`:
choices as a drop-down, booleans as a check box, whole numbers as a spin box bounded by the declared
range, text as a line edit. Real numbers are typed as text so that values such as ``2e-4`` can be
entered as written; their range is checked, like every other value, by `medsynth.settings.parse`.
Each field's tooltip is its help line and valid range. A form may show only some fields (`fields`), so
that one settings class can be split into a basic form and an advanced one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, SpinBox
from magicgui.widgets.bases import ValueWidget

from medsynth.settings import SettingInfo, describe, parse, to_dict, valid_values

# Qt spin boxes hold 32-bit integers.
_INT_LIMIT = 2**31 - 1


class SettingsForm(Container):
    """One labelled field per setting of `settings_cls` (or of those named in `fields`), in declaration order."""

    def __init__(
        self,
        settings_cls: type,
        values: Mapping[str, Any] | None = None,
        *,
        fields: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.settings_cls = settings_cls
        self._infos = [info for info in describe(settings_cls) if fields is None or info.name in fields]
        super().__init__(widgets=[field_widget(info) for info in self._infos], **kwargs)
        if values:
            self.set_values(values)

    def values(self) -> dict[str, Any]:
        """This form's validated settings as a plain dict; SettingsError naming every bad field otherwise."""
        raw = {widget.name: widget.value for widget in self._fields()}
        return {name: value for name, value in to_dict(parse(self.settings_cls, raw)).items() if name in raw}

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Show `values` (validated first, so a bad value raises SettingsError and changes nothing)."""
        typed = to_dict(parse(self.settings_cls, values))
        for widget in self._fields():
            if widget.name in values:
                widget.value = _shown(typed[widget.name], widget)

    def reset(self) -> None:
        """Show every field's declared default."""
        self.set_values({info.name: info.default for info in self._infos})

    def _fields(self) -> list[ValueWidget]:
        return [widget for widget in self if isinstance(widget, ValueWidget)]


def field_widget(info: SettingInfo) -> ValueWidget:
    """The magicgui widget for one setting, showing its default."""
    options = {"name": info.name, "tooltip": tooltip(info)}
    if info.choices is not None:
        return ComboBox(choices=list(info.choices), value=info.default, **options)
    if info.type is bool:
        return CheckBox(value=bool(info.default), **options)
    if info.type is int:
        low = -_INT_LIMIT if info.min is None else int(info.min)
        high = _INT_LIMIT if info.max is None else int(info.max)
        return SpinBox(value=int(info.default), min=low, max=high, **options)
    if info.type is float:
        return LineEdit(value=_float_text(info.default), **options)
    if info.type is str:
        return LineEdit(value=str(info.default), **options)
    raise TypeError(f"setting {info.name!r} has type {info.type!r}, which no form widget shows (bool, int, float, str)")


def tooltip(info: SettingInfo) -> str:
    """The setting's help line followed by its valid range or choices."""
    valid = valid_values(info)
    return f"{info.help} ({valid})" if valid else info.help


def _float_text(value: float) -> str:
    """Shortest text that reads back as `value` (``0.0002`` rather than ``0.00020000000000000001``)."""
    return repr(float(value))


def _shown(value: Any, widget: ValueWidget) -> Any:
    return _float_text(value) if isinstance(widget, LineEdit) and isinstance(value, float) else value
