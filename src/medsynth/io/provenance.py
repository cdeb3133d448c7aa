"""Recovering `SyntheticProvenance` from what files keep of it.

Writers store `SyntheticProvenance.summary()` (DICOM Derivation Description, NIfTI ``descrip``);
readers turn that text back into a provenance, as far as it survived truncation.
"""

from __future__ import annotations

import re

from medsynth.io.image import SyntheticProvenance

_VERSION = re.compile(r"^SYNTHETIC by medsynth (?P<version>\S+)")


def provenance_from_summary(text: str, *, model: str = "", model_version: str = "") -> SyntheticProvenance:
    """Parse a `SyntheticProvenance.summary` line; `model`/`model_version` fill what the text lacks.

    Unparsable or truncated parts end up in ``description`` rather than being dropped.
    """
    parts = [p.strip() for p in text.split(";")]
    found: dict[str, str] = {}
    rest: list[str] = []
    head = _VERSION.match(parts[0]) if parts else None
    if head:
        found["version"] = head.group("version")
        parts = parts[1:]
    for part in parts:
        key, sep, value = part.partition("=")
        if sep and key in ("recipe", "checkpoint", "seed") and key not in found:
            found[key] = value
        elif part:
            rest.append(part)
    seed = found.get("seed", "")
    return SyntheticProvenance(
        model=found.get("recipe") or model or "unknown",
        model_version=found.get("version") or model_version or "unknown",
        checkpoint=found.get("checkpoint", ""),
        seed=int(seed) if seed.lstrip("-").isdigit() else None,
        description="; ".join(rest),
    )
