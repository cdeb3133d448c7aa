"""Choosing the torch device and the mixed-precision mode."""

from __future__ import annotations

import contextlib

import torch

from medsynth.errors import SettingsError


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA (GPU `local_rank`), then Apple MPS, then CPU; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"device {name!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"device {name!r} was asked for but CUDA is not available; use --device auto or cpu")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise SettingsError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device {name!r} was asked for but MPS is not available; use --device auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SettingsError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA devices that support it (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
