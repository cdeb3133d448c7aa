"""hagan evidence: limited-data comparison with the baselines and the ablation, memorisation, cost per step.

Data: the MNI152 2009a T1 template (nilearn), axial slices at 64x64. Its 1 mm volume has 137 axial
slices with enough foreground; they are split by position into training and held-out slabs (every
fourth 8 mm slab is held out), so that no held-out slice is an interpolation neighbour of a
training slice. Two training sets come from the training slabs:

- ``100``: 100 of the training slabs' 1 mm slices, evenly spaced;
- ``500``: 500 slices resampled from the training slabs at a fifth of that spacing (linear
  interpolation along z). The template has no more anatomy than that: these are 5 times denser
  samples of the same slabs, not 5 times more anatomy.

Each (training set, model) run trains with the model's default settings (augmentation on, as the
sets are small) until `--budget` seconds of its own process CPU time have passed, on one torch
thread, then `--samples` images of its EMA generator are compared with the held-out slices:

- SWD (`medsynth.metrics.swd`, x1e3, lower is better), in the data's units;
- memorisation: each generated image's L2 distance (normalised units, per pixel) to its nearest
  training slice, against the same distance for each held-out slice. A generator that copies its
  training slices has a median ratio well below 1 and many images closer than the closest held-out
  slice;
- CPU seconds per step and parameters (generator + discriminator), against `dcgan` in the same run;
  ``--cost-only`` times the steps of all models in one process, in alternating blocks.

KID/FID need Inception weights, which are not on this machine, so they are not reported.

Models: ``dcgan``, ``wgan-gp``, ``hagan`` and ``hagan`` with one component off in turn
(``no-diffaugment``, ``no-attnmix``, ``no-hierarchical``, ``no-reverse-skip``).

    nice -n 10 python benchmarks/bench_hagan.py [--budget 240] [--sets 100,500] [--models all] [--jobs 2] [--samples 500] [--seed 0]
    nice -n 10 python benchmarks/bench_hagan.py --cost-only [--rounds 10]

Runs go to `--jobs` worker processes (one torch thread each, as nice as the command); results are
printed as Markdown tables and written to `--json`.
"""

from __future__ import annotations

import argparse
import functools
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
from scipy.ndimage import map_coordinates

from medsynth.data.datasets import SliceDataset
from medsynth.data.normalization import percentile_normalization
from medsynth.data.samples import load_sample
from medsynth.io.image import MedImage
from medsynth.metrics.swd import swd
from medsynth.settings import parse
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.generate import generate, load_recipe
from medsynth.training.recipe import get_recipe

SIZE = 64
SLAB_MM = 8
HELD_OUT_EVERY = 4
DENSER = 5
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "dcgan": ("dcgan", {}),
    "wgan-gp": ("wgan-gp", {}),
    "hagan": ("hagan", {}),
    "no-diffaugment": ("hagan", {"diffaugment": False}),
    "no-attnmix": ("hagan", {"attnmix": False}),
    "no-hierarchical": ("hagan", {"hierarchical": False}),
    "no-reverse-skip": ("hagan", {"reverse_skip": False}),
}


def kept_slices(image: MedImage) -> list[int]:
    """z indices of the axial slices the trainer would keep (enough foreground)."""
    dataset = SliceDataset([image], percentile_normalization([image.array]), SIZE)
    return sorted(int(index[0]) for _, index in dataset.items)


def split(image: MedImage) -> tuple[dict[str, MedImage], MedImage]:
    """Training sets ``{"100": ..., "500": ...}`` and the held-out slices, as ``zyx`` MedImages."""
    kept = np.array(kept_slices(image))
    held = (kept // SLAB_MM) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    train_z, held_z = kept[~held], kept[held]
    volume = np.asarray(image.array, dtype=np.float32)
    dz = image.spacing[0]
    even = train_z[np.linspace(0, len(train_z) - 1, 100).round().astype(int)]
    # Denser positions inside the training slabs only: runs of consecutive training slices.
    runs = np.split(train_z, np.flatnonzero(np.diff(train_z) > 1) + 1)
    dense = np.concatenate([np.arange(r[0], r[-1] + 1e-6, 1 / DENSER) for r in runs])
    dense = dense[np.linspace(0, len(dense) - 1, 500).round().astype(int)]
    sets = {
        "100": image.with_array(volume[even], name="mni152 100 slices"),
        "500": image.with_array(_resample_z(volume, dense), spacing=(dz / DENSER, *image.spacing[1:]),
                                name="mni152 500 slices"),
    }  # fmt: skip
    return sets, image.with_array(volume[held_z], name="mni152 held-out slices")


def _resample_z(volume: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Axial slices at fractional positions `z`, linear along z."""
    zz, yy, xx = np.meshgrid(z, np.arange(volume.shape[1]), np.arange(volume.shape[2]), indexing="ij")
    return map_coordinates(volume, [zz, yy, xx], order=1).astype(np.float32)


def slices(image: MedImage, normalization) -> np.ndarray:
    """``(N, 64, 64)`` normalised slices, prepared as the trainer prepares them (nothing skipped)."""
    dataset = SliceDataset([image], normalization, SIZE, min_foreground=0.0)
    return torch.stack([dataset[i] for i in range(len(dataset))])[:, 0].numpy()


def nearest_distances(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image, the RMS pixel difference to its nearest image of `reference` (both ``(N, H, W)``)."""
    a, b = images.reshape(len(images), -1), reference.reshape(len(reference), -1)
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0) / a.shape[1])


def run(task: tuple[str, str, float, int, int, str]) -> dict[str, Any]:
    """Train one model on one training set for a CPU budget and evaluate it (in a worker process)."""
    set_name, model, budget, n_samples, seed, workdir = task
    torch.set_num_threads(1)
    image = load_sample("mni152")
    sets, held_out = split(image)
    recipe, settings = MODELS[model]
    out_dir = Path(workdir) / f"{set_name}-{model}-{seed}"
    config = TrainConfig(recipe=recipe, out_dir=out_dir, settings=settings, steps=10**7, device="cpu", seed=seed,
                         checkpoint_every=10**9, sample_every=0, log_every=10)  # fmt: skip
    finished, cpu = train_for_cpu_seconds(config, [sets[set_name]], budget)
    steps, path, losses = finished.step, finished.checkpoint, finished.losses
    checkpoint = load_checkpoint(path)
    models = load_recipe(checkpoint, "cpu").models
    fake_units = generate(checkpoint, n_samples, seed=0, device="cpu").array
    normalization = checkpoint.normalization
    real_units = normalization.invert(slices(held_out, normalization))
    fake = np.clip(normalization.apply(fake_units), -1, 1)
    train_norm = slices(sets[set_name], normalization)
    held = slices(held_out, normalization)
    fake_nn, held_nn = nearest_distances(fake, train_norm), nearest_distances(held, train_norm)
    return {
        "set": set_name,
        "model": model,
        "seed": seed,
        "steps": steps,
        "cpu_s": cpu,
        "cpu_s_per_step": cpu / max(steps, 1),
        "parameters": sum(p.numel() for m in models.values() for p in m.parameters()),
        "swd": swd(real_units, fake_units),
        "nn_generated_median": float(np.median(fake_nn)),
        "nn_held_out_median": float(np.median(held_nn)),
        "closer_than_any_held_out": float(np.mean(fake_nn < held_nn.min())),
        "final_losses": losses,
        "load_average": os.getloadavg(),
    }


def step_costs(rounds: int, block: int) -> dict[str, float]:
    """CPU seconds per training step of every model, timed in this process in alternating blocks.

    All models train on the same 64x64 batch (MNI152 slices, augmentation on) from step 1000, so that
    the AttnMix terms run at their full rate; round-robin blocks expose each to the same load.
    """
    torch.set_num_threads(1)
    image = load_sample("mni152")
    dataset = SliceDataset([image], percentile_normalization([image.array]), SIZE)
    recipes = {}
    for model, (name, settings) in MODELS.items():
        recipe_cls = get_recipe(name)
        recipe = recipe_cls()
        recipe.augmenting = True
        recipe.build(parse(recipe_cls.settings_cls, settings), torch.device("cpu"))
        recipes[model] = recipe
    batches = {
        model: torch.stack([dataset[i % len(dataset)] for i in range(recipe.batch_size * recipe.batches_per_step)])
        for model, recipe in recipes.items()
    }

    def timed_block(model: str, round_: int) -> None:
        for _ in range(block):
            recipes[model].train_step(batches[model], 1000)

    seconds = alternating_cpu_seconds({model: functools.partial(timed_block, model) for model in recipes}, rounds)
    return {model: total / (rounds * block) for model, total in seconds.items()}


def report(results: list[dict[str, Any]]) -> None:
    for set_name in sorted({r["set"] for r in results}, key=int):
        rows = [r for r in results if r["set"] == set_name]
        base = next((r for r in rows if r["model"] == "dcgan"), None)
        print(f"\n### {set_name} training slices\n")
        print("| model | steps | CPU s/step (x dcgan) | parameters (x dcgan) | SWD mean | SWD 64 / 32 / 16 | "
              "NN distance generated / held-out (median) | generated closer than any held-out |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: list(MODELS).index(r["model"])):
            cost = f"{r['cpu_s_per_step']:.3f}" + (f" ({r['cpu_s_per_step'] / base['cpu_s_per_step']:.2f}x)" if base else "")
            params = f"{r['parameters']:,}" + (f" ({r['parameters'] / base['parameters']:.2f}x)" if base else "")
            s = r["swd"]
            levels = " / ".join(f"{s[k]:.1f}" for k in ("64", "32", "16"))
            ratio = r["nn_generated_median"] / r["nn_held_out_median"]
            print(f"| `{r['model']}` | {r['steps']:,} | {cost} | {params} | **{s['mean']:.1f}** | {levels} | "
                  f"{r['nn_generated_median']:.3f} / {r['nn_held_out_median']:.3f} ({ratio:.2f}) | "
                  f"{r['closer_than_any_held_out']:.1%} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=240.0, help="training CPU seconds per run")
    parser.add_argument("--sets", default="100,500", help="training sets: 100, 500 or both")
    parser.add_argument("--models", default="all", help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--samples", type=int, default=500, help="generated images per model")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, batches, noise)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (worker processes)")
    parser.add_argument("--cost-only", action="store_true", help="only time the steps of every model in this process")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of --cost-only")
    parser.add_argument("--json", type=Path, default=Path("bench_hagan.json"), help="where to write the results")
    args = parser.parse_args()
    models = list(MODELS) if args.models == "all" else args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")

    if args.cost_only:
        costs = step_costs(args.rounds, block=5)
        print("| model | CPU s per step | x dcgan |\n|---|---|---|")
        for model, cost in costs.items():
            print(f"| `{model}` | {cost:.3f} | {cost / costs['dcgan']:.2f}x |")
        return
    sets, held_out = split(load_sample("mni152"))
    print(f"training sets: {', '.join(f'{k}: {v.array.shape[0]} slices' for k, v in sets.items())}; "
          f"held out: {held_out.array.shape[0]} slices; load average {os.getloadavg()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        tasks = [(s, m, args.budget, args.samples, args.seed, workdir) for s in args.sets.split(",") for m in models]
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited torch threads
        results = []
        with ProcessPoolExecutor(args.jobs, spawn) as pool:
            for result in pool.map(run, tasks):  # written as they come, so that a late failure loses nothing
                results.append(result)
                args.json.write_text(json.dumps(results, indent=1))
    report(results)


if __name__ == "__main__":
    main()
