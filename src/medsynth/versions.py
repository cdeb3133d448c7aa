"""Installed versions of packages, for reports (``medsynth info``, the metrics JSON)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str:
    """The installed version of distribution `name` (e.g. ``"torch"``), or ``"not installed"``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
