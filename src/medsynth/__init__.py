"""medsynth: the GUI-free core of napari-medsynth.

Reading and writing medical images, datasets, GAN recipes, the training engine, lesion work and
metrics. Nothing here imports Qt or napari, so scripts, the CLI, cluster jobs and the plugin all use
the same library. Heavy modules (torch) load only when the submodule that needs them is imported.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-medsynth")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
