"""Checkpoint files: round trip, corruption, unknown recipes, newer formats, and no code execution on load."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from medsynth.errors import CheckpointError
from medsynth.io import read_image
from medsynth.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real checkpoint: 2 WGAN-GP steps on MNI152 axial slices."""
    from medsynth.data.samples import sample_path

    mni = read_image(sample_path("mni152"))
    config = TrainConfig(
        recipe="wgan-gp",
        out_dir=tmp_path_factory.mktemp("ckpt"),
        steps=2,
        sample_every=0,
        settings={"batch_size": 4, "g_channels": 8, "d_channels": 8, "latent_dim": 16, "n_critic": 1},
    )
    return list(train(config, [mni.with_array(mni.array[60:100])]))[-1].checkpoint


class WritesMarker:
    """Unpickling this object creates the file `marker`: the classic code-execution payload."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_keeps_everything(trained, tmp_path):
    ckpt = load_checkpoint(trained)
    assert ckpt.recipe == "wgan-gp" and ckpt.step == 2 and ckpt.format_version == FORMAT_VERSION
    assert ckpt.settings["n_critic"] == 1 and ckpt.settings["gp_lambda"] == 10.0
    assert ckpt.data["images"][0]["shape"] == [40, 233, 197] and len(ckpt.data["content_sha256"]) == 64
    adam = ckpt.state["optimizers"]["critic"]
    assert set(adam["state"]) == set(range(len(adam["param_groups"][0]["params"])))  # integer keys survive
    assert adam["param_groups"][0]["betas"] == [0.0, 0.9] and adam["state"][0]["exp_avg"].dtype == torch.float32
    copy = save_checkpoint(replace(ckpt, path=None), tmp_path / "copy.safetensors")
    again = load_checkpoint(copy)
    assert again.tensors_sha256 == ckpt.tensors_sha256 and again.normalization == ckpt.normalization
    assert torch.equal(again.state["ema"]["module.main.0.weight"], ckpt.state["ema"]["module.main.0.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["copy.safetensors"]  # no temporary file left


def test_truncated_and_corrupted_files_are_refused(trained, tmp_path):
    blob = trained.read_bytes()
    cases = {
        "empty": b"",
        "truncated_header": blob[:100],
        "truncated_data": blob[: len(blob) - 1000],
        "bit_flip": blob[:-50] + bytes([blob[-50] ^ 0x40]) + blob[-49:],
        "text": b"not a checkpoint at all, just some text in a file",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_unknown_recipe_and_newer_format_are_refused(trained, tmp_path):
    ckpt = load_checkpoint(trained)
    save_checkpoint(replace(ckpt, recipe="stylegan9"), tmp_path / "unknown.safetensors")
    with pytest.raises(CheckpointError, match="stylegan9.*dcgan.*wgan-gp"):
        load_checkpoint(tmp_path / "unknown.safetensors")
    save_checkpoint(replace(ckpt, format_version=FORMAT_VERSION + 1), tmp_path / "newer.safetensors")
    with pytest.raises(CheckpointError, match="newer.*upgrade"):
        load_checkpoint(tmp_path / "newer.safetensors")


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"state_dict": WritesMarker(str(marker))}
    evil = tmp_path / "checkpoint-0000100.safetensors"
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    # The file really is malicious: unpickling it runs the payload ...
    probe = tmp_path / "probe.bin"
    shutil.copy(evil, probe)
    if writer == "torch.save":
        torch.load(probe, weights_only=False)
    else:
        pickle.loads(probe.read_bytes())
    assert marker.exists()
    marker.unlink()
    # ... and loading it as a checkpoint does not.
    with pytest.raises(CheckpointError, match="not a medsynth checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize("recipe", [None, 7, ["dcgan"]], ids=["missing", "number", "list"])
def test_a_header_with_a_valid_hash_but_no_recipe_name_is_refused(trained, tmp_path, recipe):
    blob = trained.read_bytes()
    header_size = int.from_bytes(blob[:8], "little")
    meta = json.loads(json.loads(blob[8 : 8 + header_size])["__metadata__"]["medsynth"])
    meta.pop("recipe")
    if recipe is not None:
        meta["recipe"] = recipe
    # The same tensors make the same data section: the stored hash still matches, only the metadata is wrong.
    crafted = save_tensors(load_tensors(blob), metadata={"medsynth": json.dumps(meta)})
    assert hashlib.sha256(crafted[8 + int.from_bytes(crafted[:8], "little") :]).hexdigest() == meta["tensors_sha256"]
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(crafted)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert f"checkpoint {path} is corrupt or incomplete: its metadata names no recipe (recipe={recipe!r})" in str(
        excinfo.value
    )
