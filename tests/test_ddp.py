"""Distributed training: 2 processes on CPU with gloo, started by torchrun (`torch.distributed.run`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.distributed import parameter_digest
from medsynth.training.generate import load_recipe
from medsynth.training.runs import RUN_FILE


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_weights(tmp_path, mni152_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medsynth",
        "train",
        "--recipe",
        "wgan-gp",
        "--data",
        str(mni152_path),
        "--out",
        str(out),
        "--name",
        "ddp",
        "--steps",
        "3",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--set",
        "batch_size=4",
        "--set",
        "g_channels=8",
        "--set",
        "d_channels=8",
        "--set",
        "latent_dim=16",
        "--set",
        "n_critic=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 reports: one start line and one report per step, not two.
    assert result.stderr.count("training wgan-gp on cpu (2 processes)") == 1
    assert result.stderr.count("step 3/3") == 1
    assert sorted(p.name for p in (out / "ddp").iterdir()) == ["checkpoint-0000003.safetensors", RUN_FILE]

    ckpt = load_checkpoint(out / "ddp" / "checkpoint-0000003.safetensors")
    digests = ckpt.extra["rank_parameter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # The digest is that of the saved weights, so the ranks really held these weights.
    assert parameter_digest(load_recipe(ckpt, device="cpu").models) == digests[0]
