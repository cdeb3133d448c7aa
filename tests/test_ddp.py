"""Distributed training: 2 processes on CPU with gloo, started by torchrun (`torch.distributed.run`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medsynth.cli import main
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.distributed import parameter_digest
from medsynth.training.generate import load_recipe
from medsynth.training.runs import RUN_FILE


SMALL = {
    "wgan-gp": ["batch_size=4", "g_channels=8", "d_channels=8", "latent_dim=16", "n_critic=2"],
    # Two generators, two discriminators and image pools that differ per rank (each draws its own B slices).
    "cyclegan": ["resolution=32", "batch_size=2", "g_channels=4", "d_channels=4", "blocks=1"],
    # A student beside a frozen teacher that every rank loads (the teacher is trained in the test).
    "distill": ["batch_size=4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(SMALL))
def test_two_gloo_processes_keep_identical_weights(recipe, tmp_path, mni152_path, ct_slice_path):
    out = tmp_path / "run"
    data = ["--data", str(mni152_path)]
    if recipe == "cyclegan":
        data += ["--data-b", str(ct_slice_path)]
    settings = [arg for value in SMALL[recipe] for arg in ("--set", value)]
    if recipe == "distill":
        teacher = ["train", "--recipe", "dcgan", *data, "--out", str(tmp_path), "--name", "teacher", "--steps", "2",
                   "--device", "cpu", "--set", "batch_size=4", "--set", "latent_dim=16"]  # fmt: skip
        assert main(teacher) == 0
        settings += ["--set", f"teacher={tmp_path / 'teacher' / 'checkpoint-0000002.safetensors'}"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "medsynth", "train", "--recipe", recipe, *data, "--out", str(out), "--name", "ddp",
        "--steps", "3", "--log-every", "1", "--device", "cpu", *settings,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 reports: one start line and one report per step, not two.
    assert result.stderr.count(f"training {recipe} on cpu (2 processes)") == 1
    assert result.stderr.count("step 3/3") == 1
    assert sorted(p.name for p in (out / "ddp").iterdir()) == ["checkpoint-0000003.safetensors", RUN_FILE]

    ckpt = load_checkpoint(out / "ddp" / "checkpoint-0000003.safetensors")
    digests = ckpt.extra["rank_parameter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # The digest is that of the saved weights, so the ranks really held these weights.
    assert parameter_digest(load_recipe(ckpt, device="cpu").models) == digests[0]
