"""The package installs, napari discovers the plugin, and the core stays free of Qt and napari."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUI_MODULES = ("qtpy", "PySide6", "PyQt5", "PyQt6", "PySide2", "napari", "magicgui", "vispy")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_core_imports_no_gui_toolkit():
    loaded = _modules_after(
        "import medsynth, medsynth.io, medsynth.settings, medsynth.cli, medsynth.data.samples\n"
        "from medsynth.io import read, write_nifti, write_dicom"
    )
    assert not {m.split(".")[0] for m in loaded} & set(GUI_MODULES)


def test_plugin_import_is_light():
    loaded = _modules_after("import napari_medsynth, napari_medsynth.reader, napari_medsynth.layers")
    assert "torch" not in loaded


def test_root_manifest_is_the_package_manifest():
    root = ROOT / "napari.yaml"
    assert root.is_symlink() and root.resolve() == (ROOT / "napari_medsynth" / "napari.yaml").resolve()


def test_npe2_discovers_editable_install_and_validates():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    manifest = pm.get_manifest("napari-medsynth")
    assert manifest.name == "napari-medsynth"
    assert {s.key for s in manifest.contributions.sample_data} >= {"us_cine", "mni152", "mni152_gm", "mni152_wm", "ct_slice"}
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(ROOT / "napari.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_info_runs():
    result = subprocess.run([str(Path(sys.executable).with_name("medsynth")), "info"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout and "cpu" in result.stdout and "weights" in result.stdout


@pytest.mark.slow
def test_wheel_in_fresh_venv_is_discovered_by_npe2(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    wheel = next(tmp_path.glob("napari_medsynth-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    # The wheel without its dependencies (torch would be a multi-GB download): discovery needs only npe2.
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "npe2"], check=True)
    code = (
        "from npe2 import PluginManager\n"
        "pm = PluginManager(); pm.discover()\n"
        "m = pm.get_manifest('napari-medsynth')\n"
        "import napari_medsynth; print(m.name, len(m.contributions.sample_data), napari_medsynth.__file__)"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    name, n_samples, location = out.stdout.split()
    assert name == "napari-medsynth" and int(n_samples) == 7
    assert location.startswith(str(env_dir))
    validate = subprocess.run([str(env_dir / "bin" / "npe2"), "validate", "napari-medsynth"], capture_output=True, text=True)
    assert validate.returncode == 0, validate.stdout + validate.stderr
