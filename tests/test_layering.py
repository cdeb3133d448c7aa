"""Imports point one way: down the core's layers, and from the plugin's docks to shared plugin code only.

Read from the source (every import statement, those inside functions too), so a lazy import that
points the wrong way is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE_LAYERS = {
    "medsynth": 0,  # the package itself: its version
    "medsynth.errors": 0,
    "medsynth.settings": 1,
    "medsynth.atomic": 1,
    "medsynth.versions": 1,
    "medsynth.weights": 1,
    "medsynth.io": 2,
    "medsynth.data": 3,
    "medsynth.models": 3,
    "medsynth.losses": 3,
    "medsynth.metrics": 4,
    "medsynth.training": 4,
    "medsynth.lesions": 5,
    "medsynth.cli": 6,
    "medsynth.__main__": 7,
}
"""Each core package imports only packages of a lower layer: errors -> typed settings, atomic writes and
weight files -> io -> data (and the networks and losses) -> training and metrics -> the lesion
workflow -> the command line."""

SHARED_PLUGIN = {
    "napari_medsynth",
    "napari_medsynth.layers",
    "napari_medsynth.notify",
    "napari_medsynth.workers",
    "napari_medsynth.widgets.dock",
    "napari_medsynth.widgets.settings_form",
    "napari_medsynth.widgets.plot",
    "napari_medsynth.widgets.results_table",
    "napari_medsynth.widgets.source_picker",
}
"""What any dock widget may use of the plugin besides its own package."""


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[1:] if parts[0] == "src" else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(package: str) -> dict[str, set[str]]:
    """Every module of `package` with the absolute module names it imports."""
    folder = ROOT / "src" / package if package == "medsynth" else ROOT / package
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        found[_module(path)] = names
    return found


def _core_package(name: str) -> str | None:
    return max((p for p in CORE_LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)


def test_core_imports_point_down_its_layers():
    wrong = []
    for module, names in _imports("medsynth").items():
        own = _core_package(module)
        assert own is not None, f"{module} belongs to no layer of CORE_LAYERS: add its package there"
        for name in names:
            if name.split(".")[0] in ("napari_medsynth", "napari", "qtpy", "magicgui"):
                wrong.append(f"{module} imports {name}")
            target = _core_package(name)
            if target is not None and target != own and target != "medsynth" and CORE_LAYERS[target] >= CORE_LAYERS[own]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_data_and_io_never_reach_for_lesions_or_training():
    for module, names in _imports("medsynth").items():
        if _core_package(module) in ("medsynth.io", "medsynth.data"):
            assert not [n for n in names if n.startswith(("medsynth.lesions", "medsynth.training"))], module


def _dock_package(module: str) -> str | None:
    """The dock a widget module belongs to (``napari_medsynth.widgets.train``, ``...widgets.lesions``), None for shared code."""
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "widgets":
        return None
    name = ".".join(parts[:3])
    return None if name in SHARED_PLUGIN else name


def test_docks_use_only_shared_plugin_code_and_their_own_package():
    imports = _imports("napari_medsynth")
    docks = {_dock_package(m) for m in imports} - {None}
    assert {"napari_medsynth.widgets.train", "napari_medsynth.widgets.lesions"} <= docks
    wrong = []
    for module, names in imports.items():
        dock = _dock_package(module)
        for name in (n for n in names if n.startswith("napari_medsynth")):
            other = _dock_package(name)
            if dock is None and other is not None:
                wrong.append(f"{module} (shared) imports the dock module {name}")
            elif dock is not None and other is not None and other != dock:
                wrong.append(f"{module} imports another dock's module {name}")
    assert not wrong, "\n".join(sorted(wrong))
