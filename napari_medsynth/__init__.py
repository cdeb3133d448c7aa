"""napari-medsynth: the napari plugin over the `medsynth` core.

Only translation between napari and the core lives here (readers, writers, sample data, widgets,
workers). Nothing is imported at package import so that napari starts fast; torch loads when a
widget that needs it is opened.
"""

from medsynth import __version__

__all__ = ["__version__"]
