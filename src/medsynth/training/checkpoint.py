"""Checkpoint files: safetensors tensors plus JSON metadata, never pickle.

One file per checkpoint, ``checkpoint-<step>.safetensors``. Every tensor of the recipe's state
(model weights, optimizer moments, EMA) is a safetensors tensor named by its path in the state
(``models/generator/main.0.weight``, ``optimizers/critic/state/0/exp_avg``, ...). The header's
``__metadata__`` holds one key, ``medsynth``, whose JSON value records:

``format_version``, ``medsynth_version``, ``recipe``, ``settings``, ``step``, ``seed``,
``normalization`` (`medsynth.data.normalization.Normalization`), ``normalization_b`` (domain B's, for
two-domain recipes; absent otherwise), ``data`` (shapes, spacing,
modality, units, content hash of the training data), ``state`` (the state's structure with its
non-tensor values, tensors referenced by name), ``tensors_sha256`` (of the tensor data section,
which catches truncation and bit rot) and ``extra`` (e.g. per-rank parameter digests of a
distributed run).

SinGAN lesion models are ordinary checkpoints of the ``singan`` recipe; the files of its former
separate format (header key ``medsynth_singan``) are refused with a CheckpointError saying so.

Files are written to a temporary name in the same folder and renamed into place, so a crash never
leaves a half-written checkpoint under the final name. Reading parses the header as JSON and the
tensors with safetensors; nothing in the file is ever executed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import medsynth
from medsynth.atomic import write_bytes
from medsynth.data.normalization import Normalization
from medsynth.errors import CheckpointError, SettingsError
from medsynth.settings import parse
from medsynth.training.recipe import get_recipe

FORMAT_VERSION = 1
METADATA_KEY = "medsynth"
SUFFIX = ".safetensors"
_MAX_HEADER_BYTES = 100 * 2**20  # the safetensors limit
LEGACY_SINGAN_KEY = "medsynth_singan"
"""Header key of the SinGAN files of medsynth's former SinGAN loop: refused with a message saying so."""


@dataclass
class Checkpoint:
    """The content of one checkpoint file; `state` is the recipe's nested state with tensors on CPU."""

    recipe: str
    settings: dict[str, Any]
    step: int
    normalization: Normalization
    data: dict[str, Any]
    state: dict[str, Any]
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    normalization_b: Normalization | None = None
    """Domain B's intensity map, for two-domain recipes (`normalization` is domain A's)."""
    format_version: int = FORMAT_VERSION
    medsynth_version: str = medsynth.__version__
    path: Path | None = None
    tensors_sha256: str = ""

    @property
    def label(self) -> str:
        """File name and content hash, for provenance (e.g. ``checkpoint-0002000.safetensors sha256:1f2e...``)."""
        name = self.path.name if self.path is not None else "<memory>"
        return f"{name} sha256:{self.tensors_sha256[:16]}"


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-{step:07d}{SUFFIX}"


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> Path:
    """Write `checkpoint` to `path` atomically; returns `path` and sets ``checkpoint.path``."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(checkpoint.state, "", tensors)
    meta = {
        "format_version": checkpoint.format_version,
        "medsynth_version": checkpoint.medsynth_version,
        "recipe": checkpoint.recipe,
        "settings": checkpoint.settings,
        "step": checkpoint.step,
        "seed": checkpoint.seed,
        "normalization": checkpoint.normalization.to_dict(),
        "data": checkpoint.data,
        "extra": checkpoint.extra,
        "state": structure,
    }
    if checkpoint.normalization_b is not None:
        meta["normalization_b"] = checkpoint.normalization_b.to_dict()
    # The data section does not depend on the metadata, so hash it from a first serialisation.
    meta["tensors_sha256"] = _data_sha256(save_tensors(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    blob = save_tensors(tensors, metadata={METADATA_KEY: json.dumps(meta)})
    write_bytes(path, blob)
    checkpoint.path, checkpoint.tensors_sha256 = path, meta["tensors_sha256"]
    return path


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read a checkpoint; CheckpointError for a missing, corrupt, truncated, foreign or newer file."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    meta = _read_metadata(blob, path)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}, newer than the {FORMAT_VERSION} this medsynth "
            f"{medsynth.__version__} reads (written by medsynth {meta.get('medsynth_version', '?')}); "
            "upgrade napari-medsynth"
        )
    if _data_sha256(blob) != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"checkpoint {path} is corrupt (its tensor data does not match its hash); use another one"
        )
    if not isinstance(meta.get("recipe"), str):
        raise CheckpointError(
            f"checkpoint {path} is corrupt or incomplete: its metadata names no recipe "
            f"(recipe={meta.get('recipe')!r}); use another one"
        )
    try:
        get_recipe(meta["recipe"])
    except SettingsError as exc:
        raise CheckpointError(f"checkpoint {path} was made by a recipe this medsynth does not know: {exc}") from None
    try:
        tensors = load_tensors(blob)
        return Checkpoint(
            recipe=meta["recipe"],
            settings=dict(meta["settings"]),
            step=int(meta["step"]),
            normalization=Normalization.from_dict(meta["normalization"]),
            data=dict(meta["data"]),
            state=_unflatten(meta["state"], tensors),
            seed=int(meta.get("seed", 0)),
            extra=dict(meta.get("extra", {})),
            normalization_b=Normalization.from_dict(meta["normalization_b"]) if "normalization_b" in meta else None,
            format_version=version,
            medsynth_version=str(meta.get("medsynth_version", "")),
            path=path,
            tensors_sha256=meta["tensors_sha256"],
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete ({exc!r}); use another one") from None


def _read_metadata(blob: bytes, path: Path) -> dict[str, Any]:
    """The ``medsynth`` JSON of a safetensors header, checking the framing first."""
    not_ours = f"{path} is not a medsynth checkpoint (a .safetensors file written by medsynth train)"
    if len(blob) < 8:
        raise CheckpointError(f"{not_ours}: it is empty or truncated")
    header_size = int.from_bytes(blob[:8], "little")
    if header_size > min(_MAX_HEADER_BYTES, len(blob) - 8):
        raise CheckpointError(f"{not_ours}: its header is missing or truncated")
    try:
        metadata = json.loads(blob[8 : 8 + header_size])["__metadata__"]
        legacy = LEGACY_SINGAN_KEY in metadata
        meta = None if legacy else json.loads(metadata[METADATA_KEY])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{not_ours}: its header holds no medsynth metadata") from None
    if legacy:
        raise CheckpointError(
            f"{path} is a SinGAN lesion model in the format of medsynth before SinGAN became an engine recipe "
            f"(header key {LEGACY_SINGAN_KEY!r}), which this medsynth no longer reads; train the SinGAN again on "
            "its lesion crop (Lesions widget, or medsynth train --recipe singan)"
        )
    if not isinstance(meta, dict):
        raise CheckpointError(f"{not_ours}: its metadata is malformed")
    return meta


def _data_sha256(blob: bytes) -> str:
    header_size = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(memoryview(blob)[8 + header_size :]).hexdigest()


def _flatten(node: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-ready structure of `node`; tensors move to `tensors` under their path and are referenced by it."""
    if isinstance(node, torch.Tensor):
        name = prefix.lstrip("/")
        if name in tensors:
            raise ValueError(f"two state entries are both named {name!r}")
        tensors[name] = node.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(node, dict):
        # Pairs keep the key types (optimizer states use integer keys).
        return {"dict": [[key, _flatten(value, f"{prefix}/{key}", tensors)] for key, value in node.items()]}
    if isinstance(node, (list, tuple)):
        return {"list": [_flatten(value, f"{prefix}/{i}", tensors) for i, value in enumerate(node)]}
    if node is None or isinstance(node, (bool, int, float, str)):
        return {"value": node}
    raise TypeError(f"cannot store a {type(node).__name__} in a checkpoint (at {prefix})")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "dict" in node:
        return {key: _unflatten(value, tensors) for key, value in node["dict"]}
    if "list" in node:
        return [_unflatten(value, tensors) for value in node["list"]]
    return node["value"]


def checkpoint_settings(checkpoint: Checkpoint, overrides: dict[str, Any] | None = None) -> Any:
    """The recipe settings stored in `checkpoint`, with `overrides` (e.g. a resumed run's ``--set``) on top.

    A stored value that is not valid (the file was edited) gives a CheckpointError naming the file; a
    bad override gives the usual SettingsError.
    """
    overrides = dict(overrides or {})
    settings_cls = get_recipe(checkpoint.recipe).settings_cls
    stored = {key: value for key, value in checkpoint.settings.items() if key not in overrides}
    try:
        parse(settings_cls, stored)
    except SettingsError as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint.path or checkpoint.label} stores settings that are not valid ({exc}); the file "
            "was edited or damaged: use another checkpoint, or correct those values"
        ) from None
    return parse(settings_cls, {**stored, **overrides})
