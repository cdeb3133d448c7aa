"""kgan-fusion evidence: the KGAN fusion teacher, its distilled student and a same-size student trained from scratch.

Data: the MNI152 2009a T1 template (domain A) with its own grey-matter probability map (domain B), a
co-registered "image + functional map" pair (nilearn). Axial planes are resampled in-plane to 64 x 54
px (bilinear, both volumes alike), so that the models train and fuse at their own 64 px side
without resizing. Of the planes that the trainer keeps (enough foreground), the even ones train and
the odd ones are the test pairs (the paper: 200 training and 100 test pairs at 256 x 256 with random
flips; the run augments with flips, small rotations, scalings and shifts).

Runs, each on one torch thread until it has used its budget of its own process CPU time:

- ``teacher``: ``kgan-fusion`` at width 32, `--teacher-budget` seconds;
- ``student``: ``kgan-fusion`` at width 12 (14% of the teacher's generator parameters) distilled
  from the teacher's checkpoint, `--budget` seconds;
- ``scratch``: the same width-12 model trained without a teacher, the same `--budget`;
- every recipe of `BASELINES` this medsynth has (``cyclegan``: trained on the same slices as
  unpaired sets, its ``b2a`` translation of the GM map as the image in T1 units), `--teacher-budget`.

Then, for each model, on the test pairs: SF, SSIM to each source (and their mean) and SCD
(`medsynth.metrics.evaluate.evaluate_fusion`, all sets on a 0-255 scale), beside two reference rows
that need no training (the T1 itself; the average of T1 and GM map on one scale); generator
parameters; and generation time per fused image (the EMA generator on chunks of `--chunk` test
pairs, one thread, the models timed in alternating blocks so that they see the same load).

    nice -n 10 python benchmarks/bench_fusion.py [--teacher-budget 240] [--budget 120] [--seed 0]
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

import numpy as np
import torch
from budget import alternating_cpu_seconds, train_for_cpu_seconds
from scipy import ndimage

from medsynth.data.datasets import fit_square
from medsynth.data.domains import TwoDomains
from medsynth.data.normalization import percentile_normalization
from medsynth.data.samples import load_sample
from medsynth.io.image import MedImage
from medsynth.metrics.evaluate import evaluate_fusion
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.generate import load_recipe
from medsynth.training.recipe import list_recipes
from medsynth.training.translate import translate

SIZE = 64
TEACHER = {"resolution": SIZE, "batch_size": 4, "width": 32}
STUDENT = {**TEACHER, "width": 12}
BASELINES = {"cyclegan": ({"resolution": SIZE, "batch_size": 4}, "b2a", "g_ba")}
"""Recipes trained on the same slices when this medsynth has them: their settings, the direction that gives an
image in T1 units from the GM map, and the model doing it (whose parameters are counted)."""
PAPER = {"CycleGAN": (15.31, 0.542, 1.256), "CSGAN": (15.52, 0.558, 1.197), "KGAN": (16.37, 0.593, 1.339)}
"""SF, SSIM, SCD of the KGAN paper's table (brain MR/CT, 100 test pairs at 256 x 256)."""


def pairs() -> tuple[tuple[MedImage, MedImage], tuple[MedImage, MedImage]]:
    """(training T1, GM) and (test T1, GM) volumes of axial planes at 64 x 54 px, even and odd kept planes."""
    t1, gm = load_sample("mni152"), load_sample("mni152_gm")
    factor = SIZE / max(t1.array.shape[1:])
    zoom = (1.0, factor, factor)
    volumes = [ndimage.zoom(np.asarray(image.array, np.float32), zoom, order=1) for image in (t1, gm)]
    normalization = percentile_normalization([volumes[0]])
    # The trainer keeps planes with at least 5% foreground: pick from those only, so train and test alternate.
    foreground = (normalization.apply(volumes[0]) > -0.9).mean(axis=(1, 2)) >= 0.05
    kept = np.flatnonzero(foreground)
    spacing = (t1.spacing[0], t1.spacing[1] / factor, t1.spacing[2] / factor)
    made = []
    for part in (kept[0::2], kept[1::2]):
        made.append(tuple(image.with_array(v[part], spacing=spacing) for image, v in zip((t1, gm), volumes)))
    return made[0], made[1]


def train_for(task: tuple[str, str, dict[str, Any], float, int, str]) -> dict[str, Any]:
    """Train `recipe` with `settings` on the training pairs for `budget` CPU seconds (in a worker process)."""
    name, recipe, settings, budget, seed, workdir = task
    torch.set_num_threads(1)
    (t1, gm), _ = pairs()
    config = TrainConfig(recipe=recipe, out_dir=Path(workdir) / name, settings=settings, steps=10**7, device="cpu",
                         seed=seed, checkpoint_every=10**9, sample_every=0, log_every=10)  # fmt: skip
    finished, cpu = train_for_cpu_seconds(config, TwoDomains([t1], [gm]), budget)
    return {"name": name, "recipe": recipe, "settings": settings, "steps": finished.step, "cpu_s": cpu,
            "checkpoint": str(finished.checkpoint), "final_losses": finished.losses,
            "load_average": os.getloadavg()}  # fmt: skip


def model_inputs(checkpoint: str, t1: MedImage, gm: MedImage, n: int) -> torch.Tensor:
    """``(n, 2, 64, 64)``: the first `n` test pairs as the model reads them (each in its domain's map, squared)."""
    maps = load_checkpoint(checkpoint)
    a, b = maps.normalization.apply(t1.array[:n]), maps.normalization_b.apply(gm.array[:n])
    planes = [np.stack([a[i], b[i]]) for i in range(n)]
    return torch.stack([fit_square(torch.from_numpy(pair).float(), SIZE) for pair in planes])


def fused(checkpoint: str, t1: MedImage, gm: MedImage) -> np.ndarray:
    """The model's image in T1 units of each test pair: a fusion of (T1, GM), or a baseline's translation of GM."""
    loaded = load_checkpoint(checkpoint)
    if loaded.recipe == "kgan-fusion":
        return translate(loaded, [t1, gm], device="cpu").array
    return translate(loaded, [gm], direction=BASELINES[loaded.recipe][1], device="cpu").array


def generation_seconds(checkpoints: dict[str, str], inputs: torch.Tensor, rounds: int) -> dict[str, float]:
    """CPU seconds per fused image of each fusion checkpoint's EMA generator, timed in alternating blocks."""
    torch.set_num_threads(1)
    recipes = {name: load_recipe(load_checkpoint(path), "cpu") for name, path in checkpoints.items()}
    calls = {name: lambda round_, recipe=recipe: recipe.translate(inputs, "fuse") for name, recipe in recipes.items()}
    seconds = alternating_cpu_seconds(calls, rounds)
    return {name: total / (rounds * len(inputs)) for name, total in seconds.items()}


def figures(fusion: np.ndarray, t1: MedImage, gm: MedImage) -> dict[str, float]:
    """Mean SF, SSIM to A and B and their mean, SCD over the test pairs."""
    results = evaluate_fusion(fusion, np.asarray(t1.array), np.asarray(gm.array))
    return {r.name: r.mean for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-budget", type=float, default=240.0, help="training CPU seconds of the teacher")
    parser.add_argument("--budget", type=float, default=120.0, help="training CPU seconds of each student")
    parser.add_argument("--chunk", type=int, default=32, help="test pairs per forward pass when timing generation")
    parser.add_argument("--rounds", type=int, default=10, help="timed generation rounds")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--json", type=Path, default=Path("bench_fusion.json"), help="where to write the results")
    args = parser.parse_args()
    print(f"load average at start {os.getloadavg()}")
    known = {info.name for info in list_recipes()}
    baselines = {name: settings for name, (settings, _, _) in BASELINES.items() if name in known}
    for name in BASELINES.keys() - baselines.keys():
        print(f"baseline {name!r}: this medsynth has no such recipe; skipped")
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited torch threads
    with tempfile.TemporaryDirectory() as workdir, ProcessPoolExecutor(2, spawn) as pool:
        task = lambda name, recipe, settings, budget: pool.submit(  # noqa: E731
            train_for, (name, recipe, settings, budget, args.seed, workdir)
        )
        scratch = task("scratch", "kgan-fusion", STUDENT, args.budget)
        teacher = task("teacher", "kgan-fusion", TEACHER, args.teacher_budget).result()
        student = task("student", "kgan-fusion", {**STUDENT, "teacher": teacher["checkpoint"]}, args.budget)
        others = [task(name, name, settings, args.teacher_budget) for name, settings in baselines.items()]
        runs = [teacher, student.result(), scratch.result(), *(other.result() for other in others)]
        _, (t1, gm) = pairs()
        fusions = {r["name"]: r for r in runs if r["recipe"] == "kgan-fusion"}
        inputs = model_inputs(teacher["checkpoint"], t1, gm, min(args.chunk, len(t1.array)))
        per_image = generation_seconds({name: r["checkpoint"] for name, r in fusions.items()}, inputs, args.rounds)
        for r in runs:
            r["figures"] = figures(fused(r["checkpoint"], t1, gm), t1, gm)
            model = "generator" if r["recipe"] == "kgan-fusion" else BASELINES[r["recipe"]][2]
            generator = load_recipe(load_checkpoint(r["checkpoint"]), "cpu").models[model]
            r["generator_parameters"] = sum(p.numel() for p in generator.parameters())
            r["s_per_image"] = per_image.get(r["name"])
    gm_on_t1_scale = np.asarray(gm.array) / np.ptp(gm.array) * np.ptp(t1.array) + np.min(t1.array)
    references = {"T1 itself": figures(np.asarray(t1.array), t1, gm),
                  "average of T1 and GM map": figures((np.asarray(t1.array) + gm_on_t1_scale) / 2, t1, gm)}  # fmt: skip
    args.json.write_text(json.dumps({"runs": runs, "references": references, "test_pairs": len(t1.array)}, indent=1))
    print_table(runs, references, len(t1.array))
    print(f"\nload average at end {os.getloadavg()}")


def print_table(runs: list[dict[str, Any]], references: dict[str, dict[str, float]], n_test: int) -> None:
    print(f"\n{n_test} test pairs\n\n| model | training CPU s (steps) | generator parameters (x teacher) "
          "| ms per image (teacher / model) | SF | SSIM (to A / to B) | SCD |\n|---|---|---|---|---|---|---|")  # fmt: skip
    base = runs[0]
    for r in runs:
        f = r["figures"]
        params = r["generator_parameters"]
        size = f"{params:,} ({params / base['generator_parameters']:.3f}x)"
        speed = "-" if r["s_per_image"] is None else (
            f"{1e3 * r['s_per_image']:.2f} ({base['s_per_image'] / r['s_per_image']:.1f}x faster)")
        print(f"| {r['name']} | {r['cpu_s']:.0f} ({r['steps']:,}) | {size} | {speed} | {f['sf']:.2f} | "
              f"{f['ssim']:.3f} ({f['ssim_a']:.3f} / {f['ssim_b']:.3f}) | {f['scd']:.3f} |")  # fmt: skip
    for name, f in references.items():
        print(f"| {name} (no model) | - | - | - | {f['sf']:.2f} | {f['ssim']:.3f} ({f['ssim_a']:.3f} / "
              f"{f['ssim_b']:.3f}) | {f['scd']:.3f} |")  # fmt: skip
    for name, (sf, ssim, scd) in PAPER.items():
        print(f"| paper: {name} (MR/CT, 256 px) | - | - | - | {sf} | {ssim} | {scd} |")


if __name__ == "__main__":
    main()
