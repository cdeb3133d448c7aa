"""distill evidence: a distilled student against its teacher and against a student of the same size trained from scratch.

Data: the MNI152 2009a T1 template (nilearn), axial slices at 64x64, split by position into training
and held-out slabs as in `bench_hagan` (100 training slices, 32 held-out; `bench_hagan.split`).

Three runs, each on one torch thread until it has used its budget of its own process CPU time:

- ``teacher``: ``dcgan`` with its defaults (widths 16), `--teacher-budget` seconds;
- ``distilled``: ``distill`` from the teacher's checkpoint (width factor 0.25), `--budget` seconds;
- ``scratch``: ``dcgan`` at the student's widths (``g_channels = d_channels = 4``), the same `--budget`.

Each ``--variant NAME:KEY=VALUE,...`` adds a distilled run with those settings changed (e.g.
``--variant beta1:beta=1.0,lr_d=0.0002``), trained like ``distilled``.

Then, for each: generator parameters, generation time per image (the EMA generator drawing
`--chunk` images per forward pass on one thread, the models timed in alternating blocks so that
they see the same load; ratios against the teacher), and SWD x1e3 (`medsynth.metrics.swd`, data
units) of `--samples` generated images against the held-out slices.

    nice -n 10 python benchmarks/bench_distill.py [--teacher-budget 180] [--budget 90] [--samples 500] [--seed 0]
        [--variant NAME:KEY=VALUE,... ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from bench_hagan import slices, split
from budget import alternating_cpu_seconds, train_for_cpu_seconds

from medsynth.data.samples import load_sample
from medsynth.metrics.swd import swd
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.generate import generate, load_recipe

SCRATCH = {"g_channels": 4, "d_channels": 4}
"""The student's widths: the teacher's 16 times the width factor 0.25."""


def train_for(task: tuple[str, str, dict[str, Any], float, int, str]) -> dict[str, Any]:
    """Train `recipe` with `settings` on the training slices for `budget` CPU seconds (in a worker process)."""
    name, recipe, settings, budget, seed, workdir = task
    torch.set_num_threads(1)
    sets, _ = split(load_sample("mni152"))
    config = TrainConfig(recipe=recipe, out_dir=Path(workdir) / name, settings=settings, steps=10**7, device="cpu",
                         seed=seed, checkpoint_every=10**9, sample_every=0, log_every=50)  # fmt: skip
    finished, cpu = train_for_cpu_seconds(config, [sets["100"]], budget)
    return {"name": name, "recipe": recipe, "steps": finished.step, "cpu_s": cpu, "checkpoint": str(finished.checkpoint),
            "final_losses": finished.losses, "load_average": os.getloadavg()}  # fmt: skip


def generation_seconds(checkpoints: dict[str, str], chunk: int, rounds: int) -> dict[str, float]:
    """CPU seconds per generated image of each checkpoint's EMA generator, timed in alternating blocks."""
    torch.set_num_threads(1)
    recipes = {name: load_recipe(load_checkpoint(path), "cpu") for name, path in checkpoints.items()}
    calls = {
        name: lambda round_, recipe=recipe: recipe.sample(chunk, torch.Generator().manual_seed(round_))
        for name, recipe in recipes.items()
    }
    seconds = alternating_cpu_seconds(calls, rounds)
    return {name: total / (rounds * chunk) for name, total in seconds.items()}


def variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` -> (NAME, settings); the trainer parses the values against the settings."""
    name, _, assignments = text.partition(":")
    return name, dict(item.split("=", 1) for item in assignments.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-budget", type=float, default=180.0, help="the teacher's training CPU seconds")
    parser.add_argument("--budget", type=float, default=90.0, help="training CPU seconds of each student")
    parser.add_argument("--samples", type=int, default=500, help="generated images per model for SWD")
    parser.add_argument("--chunk", type=int, default=256, help="images per forward pass when timing generation")
    parser.add_argument("--rounds", type=int, default=10, help="timed generation rounds")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--json", type=Path, default=Path("bench_distill.json"), help="where to write the results")
    parser.add_argument("--variant", action="append", default=[], type=variant, metavar="NAME:KEY=VALUE,...",
                        help="another distilled run with these settings changed (repeatable)")  # fmt: skip
    args = parser.parse_args()
    print(f"load average at start {os.getloadavg()}")
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited torch threads
    with tempfile.TemporaryDirectory() as workdir, ProcessPoolExecutor(2, spawn) as pool:
        scratch = pool.submit(train_for, ("scratch", "dcgan", SCRATCH, args.budget, args.seed, workdir))
        teacher = pool.submit(train_for, ("teacher", "dcgan", {}, args.teacher_budget, args.seed, workdir)).result()
        distill = {"teacher": teacher["checkpoint"], "width_factor": 0.25}
        students = [("distilled", {}), *args.variant]
        futures = [pool.submit(train_for, (name, "distill", {**distill, **changes}, args.budget, args.seed, workdir))
                   for name, changes in students]  # fmt: skip
        runs = [teacher, *(future.result() for future in futures), scratch.result()]
        checkpoints = {r["name"]: r["checkpoint"] for r in runs}
        per_image = generation_seconds(checkpoints, args.chunk, args.rounds)
        _, held_out = split(load_sample("mni152"))
        for r in runs:
            checkpoint = load_checkpoint(r["checkpoint"])
            real = checkpoint.normalization.invert(slices(held_out, checkpoint.normalization))
            r["generator_parameters"] = sum(p.numel() for p in load_recipe(checkpoint, "cpu").models["generator"].parameters())
            r["s_per_image"] = per_image[r["name"]]
            r["swd"] = swd(real, generate(checkpoint, args.samples, seed=1, device="cpu").array)
    args.json.write_text(json.dumps(runs, indent=1))
    base = runs[0]
    print("\n| model | training CPU s (steps) | generator parameters (x teacher) | ms per image (teacher / model) "
          "| SWD mean (x teacher) | SWD 64 / 32 / 16 |\n|---|---|---|---|---|---|")  # fmt: skip
    for r in runs:
        s = r["swd"]
        print(f"| {r['name']} | {r['cpu_s']:.0f} ({r['steps']:,}) | {r['generator_parameters']:,} "
              f"({r['generator_parameters'] / base['generator_parameters']:.3f}x) | {1e3 * r['s_per_image']:.3f} "
              f"({base['s_per_image'] / r['s_per_image']:.1f}x faster) | **{s['mean']:.1f}** ({s['mean'] / base['swd']['mean']:.2f}x) "
              f"| {' / '.join(f'{s[k]:.1f}' for k in ('64', '32', '16'))} |")  # fmt: skip
    print(f"\nload average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
