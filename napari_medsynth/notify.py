"""Showing core errors, and what reading a file had to assume, to the user without taking the viewer down."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medsynth.io.image import MedImage

log = logging.getLogger("napari_medsynth")


def report_error(exc: BaseException) -> None:
    """Show `exc` as a napari error notification (and log it)."""
    from napari.utils.notifications import show_error

    log.error("%s: %s", type(exc).__name__, exc)
    show_error(f"{type(exc).__name__}: {exc}")


def report_assumptions(image: MedImage) -> None:
    """Warn about what reading `image` had to assume (e.g. 1 mm pixels when a file gives no spacing)."""
    from napari.utils.notifications import show_warning

    for note in image.metadata.get("notes", []):
        if "assumed" in note:
            show_warning(f"{image.name}: {note}")
