"""Pretrained weight files: which ones medsynth knows, where it looks for them, how it reads them.

medsynth never downloads anything. Each known file is looked for, in this order, in

1. an explicit ``path`` given by the caller (a file, or a folder holding the file); when one is given,
   nothing else is searched, so a wrong path is reported instead of silently replaced,
2. the folder named by ``$MEDSYNTH_WEIGHTS_DIR``,
3. torch's hub cache ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, by default
   ``~/.cache/torch/hub/checkpoints``), where torchvision, pytorch-fid and friends put their downloads,
4. ``~/.cache/medsynth/weights``.

Files are read with ``torch.load(..., weights_only=True)`` (tensors only: a weight file can never run
code) or, for ``.safetensors`` files, with safetensors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medsynth.errors import CheckpointError, MissingWeightsError

if TYPE_CHECKING:
    import torch

ENV_WEIGHTS_DIR = "MEDSYNTH_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file medsynth can use."""

    name: str
    """Registry key, e.g. ``"inception-fid"``."""
    filename: str
    """File name as published upstream (torch hub keeps it, so caches are shared)."""
    description: str
    """What the file holds and which metric or loss needs it."""
    url: str
    """Where the file is published, for the user to fetch on a machine with internet access."""
    how_to_get: str = ""
    """Extra advice on obtaining the file, when a plain download is not the easiest way."""
    aliases: tuple[str, ...] = ()
    """Other names under which other tools cache the very same file (same hash in the name)."""

    @property
    def filenames(self) -> tuple[str, ...]:
        """Every accepted file name, the published one first."""
        return (self.filename, *self.aliases)


REGISTRY: dict[str, WeightFile] = {
    f.name: f
    for f in (
        WeightFile(
            "inception-fid",
            "pt_inception-2015-12-05-6726825d.pth",
            "FID Inception-v3 (TensorFlow 2015-12-05 graph ported to PyTorch by pytorch-fid); FID and KID",
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
            aliases=("weights-inception-2015-12-05-6726825d.pth",),  # torch-fidelity's copy
        ),
        WeightFile(
            "vgg16",
            "vgg16-397923af.pth",
            "torchvision VGG16 ImageNet weights; LPIPS and perceptual losses",
            "https://download.pytorch.org/models/vgg16-397923af.pth",
        ),
        WeightFile(
            "vgg19",
            "vgg19-dcbb9e9d.pth",
            "torchvision VGG19 ImageNet weights; perceptual losses",
            "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        ),
        WeightFile(
            "lpips-vgg",
            "vgg.pth",
            "LPIPS v0.1 linear layers for VGG16 features; LPIPS (also needs 'vgg16')",
            "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
            "it is also inside the 'lpips' wheel on PyPI: `pip download lpips --no-deps`, unzip, "
            "take lpips/weights/v0.1/vgg.pth",
        ),
    )
}


def _entry(name: str) -> WeightFile:
    try:
        return REGISTRY[name]
    except KeyError:
        raise MissingWeightsError(
            f"unknown weight file name {name!r}; known names: {', '.join(REGISTRY)}"
        ) from None


def torch_hub_checkpoints_dir() -> Path:
    """torch's hub download folder, ``torch.hub.get_dir()/checkpoints``.

    When torch is already imported its own answer is used (it honours ``torch.hub.set_dir``);
    otherwise the same rule is applied to ``$TORCH_HOME`` and ``$XDG_CACHE_HOME`` so that listing
    weights (``medsynth info``) does not pay for importing torch.
    """
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir()) / "checkpoints"
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    torch_home = os.getenv("TORCH_HOME", os.path.join(cache, "torch"))
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def search_dirs() -> list[Path]:
    """The folders searched when no explicit path is given, in order."""
    dirs = []
    env = os.getenv(ENV_WEIGHTS_DIR)
    if env:
        dirs.append(Path(os.path.expanduser(env)))
    dirs.append(torch_hub_checkpoints_dir())
    dirs.append(Path.home() / ".cache" / "medsynth" / "weights")
    return dirs


def _candidates(entry: WeightFile, path: str | os.PathLike | None) -> list[Path]:
    if path is not None:
        path = Path(os.path.expanduser(path))
        return [path / name for name in entry.filenames] if path.is_dir() else [path]
    return [folder / name for folder in search_dirs() for name in entry.filenames]


def find_weights(name: str, path: str | os.PathLike | None = None) -> Path | None:
    """The local file of weights `name` (a `REGISTRY` key), or None when it is nowhere searched."""
    return next((p for p in _candidates(_entry(name), path) if p.is_file()), None)


def require_weights(name: str, path: str | os.PathLike | None = None) -> Path:
    """Like `find_weights`, but raise `MissingWeightsError` saying where to put the file when absent."""
    entry = _entry(name)
    found = find_weights(name, path)
    if found is not None:
        return found
    searched = "\n".join(f"  - {p}" for p in _candidates(entry, path))
    advice = f"\nAlternatively, {entry.how_to_get}." if entry.how_to_get else ""
    raise MissingWeightsError(
        f"pretrained weights {entry.filename!r} ({entry.description}) not found. Looked for:\n{searched}\n"
        f"medsynth does not download files. Fetch {entry.url} on a machine with internet access and "
        f"put it, keeping the name {entry.filename!r}, in one of those folders or in the folder named by "
        f"${ENV_WEIGHTS_DIR}, or pass its path explicitly.{advice}"
    )


def weights_report() -> list[tuple[str, Path | None]]:
    """Each known weight name with its local file, or None when missing (for ``medsynth info``)."""
    return [(name, find_weights(name)) for name in REGISTRY]


def read_state_dict(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, on the CPU; never unpickles code.

    Raises `CheckpointError` naming the file when it is not a readable state dict.
    """
    import torch

    file = Path(file)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file), device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for truncated or foreign files
        raise CheckpointError(
            f"cannot read weight file {str(file)!r}: {exc}. It may be truncated or not a PyTorch/safetensors "
            "state dict; download it again."
        ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"weight file {str(file)!r} does not hold a flat state dict (name -> tensor); "
            "use the file named in the error of the metric that asked for it."
        )
    return dict(state)


def load_into(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    file: str | os.PathLike,
    *,
    optional: Iterable[str] = ("num_batches_tracked",),
) -> None:
    """Copy `state` into `module`, requiring exactly its keys and shapes.

    Keys ending in one of `optional` may be absent from or extra in the file (older files lack
    BatchNorm's ``num_batches_tracked``). Raises `CheckpointError` naming the file, the missing,
    unexpected and mis-shaped keys.
    """
    optional = tuple(optional)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in expected and not k.endswith(optional)]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        problems = [
            label + ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
            for label, items in (
                ("missing keys: ", missing),
                ("unexpected keys: ", unexpected),
                ("wrong shapes: ", misshaped),
            )
            if items
        ]
        raise CheckpointError(
            f"weight file {str(file)!r} does not fit {type(module).__name__}: {'; '.join(problems)}. "
            "Is it the right file for this network?"
        )
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
