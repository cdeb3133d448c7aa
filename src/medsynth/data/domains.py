"""Training data of two domains (e.g. CT and MR), for recipes that translate or fuse images.

`TwoDomains` holds the images of domain A and of domain B; `medsynth.data.domain_dataset` makes
training items of them. This module imports no torch, so the plugin can hand such data to a
training process without loading torch on the viewer's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medsynth.errors import InputError


@dataclass
class TwoDomains:
    """The training images of domain A and of domain B (MedImages or arrays)."""

    a: Sequence[Any]
    b: Sequence[Any]


def as_two_domains(data: Any, recipe: str) -> TwoDomains:
    """`data` when it is `TwoDomains`; InputError saying how to give two domains otherwise."""
    if isinstance(data, TwoDomains):
        if not data.a or not data.b:
            missing = "A" if not data.a else "B"
            raise InputError(
                f"recipe {recipe!r} trains on two domains but domain {missing} has no images; give images of both "
                "(CLI: --data for A and --data-b for B)"
            )
        return data
    raise InputError(
        f"recipe {recipe!r} trains on two domains: pass medsynth.data.domains.TwoDomains(a=[...], b=[...]), not a "
        f"{type(data).__name__} (CLI: --data for domain A and --data-b for domain B)"
    )
