"""Dock widgets of the plugin; each translates between napari and one part of the core."""
