"""Showing core errors to the user without taking the viewer down."""

from __future__ import annotations

import logging

log = logging.getLogger("napari_medsynth")


def report_error(exc: BaseException) -> None:
    """Show `exc` as a napari error notification (and log it)."""
    from napari.utils.notifications import show_error

    log.error("%s: %s", type(exc).__name__, exc)
    show_error(f"{type(exc).__name__}: {exc}")
