"""SettingsForm renders the recipes' settings dataclasses and turns widget values into typed settings."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from magicgui.widgets import CheckBox, ComboBox, LineEdit, SpinBox

from medsynth.errors import SettingsError
from medsynth.settings import describe, setting, to_dict
from medsynth.training.recipe import get_recipe
from napari_medsynth.widgets.settings_form import SettingsForm


@pytest.fixture
def dcgan_settings() -> type:
    return get_recipe("dcgan").settings_cls


@pytest.fixture
def wgan_settings() -> type:
    return get_recipe("wgan-gp").settings_cls


def test_every_setting_is_rendered_with_its_range_choices_and_help(qtbot, dcgan_settings):
    form = SettingsForm(dcgan_settings)
    infos = {info.name: info for info in describe(dcgan_settings)}
    assert [w.name for w in form] == list(infos)

    resolution = form["resolution"]
    assert isinstance(resolution, ComboBox)
    assert tuple(resolution.choices) == infos["resolution"].choices

    batch = form["batch_size"]
    assert isinstance(batch, SpinBox)
    assert (batch.min, batch.max) == (infos["batch_size"].min, infos["batch_size"].max)

    lr = form["lr_g"]
    assert isinstance(lr, LineEdit)
    assert lr.value == "0.0002"
    assert infos["lr_g"].help in lr.tooltip and "1e-06 to 0.1" in lr.tooltip
    for name, info in infos.items():
        assert info.help in form[name].tooltip


def test_values_of_an_untouched_form_are_the_defaults(qtbot, dcgan_settings, wgan_settings):
    for cls in (dcgan_settings, wgan_settings):
        assert SettingsForm(cls).values() == to_dict(cls())


def test_edited_values_come_back_typed(qtbot, wgan_settings):
    form = SettingsForm(wgan_settings)
    form["lr_g"].value = "5e-5"
    form["resolution"].value = 128
    form["critic_norm"].value = "none"
    form["n_critic"].value = 3
    values = form.values()
    assert values["lr_g"] == pytest.approx(5e-5) and isinstance(values["lr_g"], float)
    assert values["resolution"] == 128
    assert values["critic_norm"] == "none"
    assert values["n_critic"] == 3


def test_bad_values_raise_one_error_naming_each_key(qtbot, dcgan_settings):
    form = SettingsForm(dcgan_settings)
    form["lr_g"].value = "0"
    form["beta1"].value = "half"
    with pytest.raises(SettingsError) as info:
        form.values()
    message = str(info.value)
    assert "lr_g" in message and "at least 1e-06" in message
    assert "beta1" in message and "number" in message
    assert "lr_d" not in message


def test_a_spin_box_cannot_leave_the_declared_range(qtbot, dcgan_settings):
    form = SettingsForm(dcgan_settings)
    with pytest.raises(ValueError, match="5000"):
        form["batch_size"].value = 5000
    form["batch_size"].native.setValue(5000)  # as typed by a user: Qt clamps
    assert form.values()["batch_size"] == 1024


def test_set_values_round_trips_and_rejects_bad_values_without_change(qtbot, dcgan_settings):
    form = SettingsForm(dcgan_settings, values={"lr_d": 1e-3, "latent_dim": 64})
    assert form.values()["lr_d"] == pytest.approx(1e-3)
    assert form.values()["latent_dim"] == 64
    assert form["lr_d"].value == "0.001"

    with pytest.raises(SettingsError, match="latent_dim"):
        form.set_values({"lr_d": 5e-4, "latent_dim": 2})
    assert form.values()["lr_d"] == pytest.approx(1e-3)
    with pytest.raises(SettingsError, match="unknown setting 'depth'"):
        form.set_values({"depth": 3})


@dataclass
class _Mixed:
    name: str = setting("run", "A label")
    flip: bool = setting(True, "Flip images")
    steps: int = setting(7, "Steps without bounds")


def test_text_booleans_and_unbounded_integers(qtbot):
    form = SettingsForm(_Mixed)
    assert isinstance(form["name"], LineEdit) and isinstance(form["flip"], CheckBox)
    form["flip"].value = False
    form["name"].value = "second"
    form["steps"].value = -3
    assert form.values() == {"name": "second", "flip": False, "steps": -3}


@dataclass
class _Unsupported:
    shape: tuple = setting((1, 2), "Not a supported type")


def test_an_unsupported_setting_type_is_refused_by_name(qtbot):
    with pytest.raises(TypeError, match="shape"):
        SettingsForm(_Unsupported)
