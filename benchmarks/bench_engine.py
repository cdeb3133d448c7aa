"""Training engine benchmark: overhead against a bare PyTorch loop, and baseline quality after a CPU budget.

1. Engine overhead: images/s of `medsynth.training.trainer.train` running the `dcgan` recipe versus
   a bare PyTorch loop of the same networks, optimizers, loss, EMA update and batch size, on the same
   MNI152 axial slices, in the same process. The two run in alternating blocks of `--block` steps
   (both are generators, so each picks up where it left off) for `--rounds` rounds after a warm-up
   round; the ratio of their total times and the median of the per-round ratios are reported, per
   wall second and per CPU second of the process. Goal: the engine within 5 % of the bare loop.
2. Baseline quality: `dcgan` and `wgan-gp` (default settings, 64x64) each train for `--budget`
   seconds of process CPU time on the MNI152 axial slices, then 1,000 samples of the EMA generator
   are compared with the real slices by SWD (`medsynth.metrics.swd`, x1e3, lower is better). For
   scale, the same figure is given for an untrained generator and for two halves of the real slices.

    python benchmarks/bench_engine.py [--block 10] [--rounds 60] [--budget 600] [--threads 1] [--no-quality]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from budget import train_for_cpu_seconds

from medsynth.data.datasets import SliceDataset
from medsynth.data.normalization import percentile_normalization
from medsynth.data.samples import load_sample
from medsynth.metrics.swd import swd
from medsynth.models.dcgan import DCGANDiscriminator, DCGANGenerator
from medsynth.models.ema import EMA
from medsynth.settings import parse
from medsynth.training import events
from medsynth.training.config import TrainConfig
from medsynth.training.generate import generate
from medsynth.training.recipe import get_recipe
from medsynth.training.recipes.dcgan import DCGANSettings
from medsynth.training.trainer import train

DEFAULTS = DCGANSettings()


def bare_loop(real: torch.Tensor, block: int, seed: int = 0) -> Iterator[float]:
    """A plain DCGAN loop with the recipe's defaults; yields the (wall, CPU) seconds of every `block` steps."""
    s = DEFAULTS
    batch_size, latent = s.batch_size, s.latent_dim
    torch.manual_seed(seed)
    generator = DCGANGenerator(s.resolution, latent, s.g_channels)
    discriminator = DCGANDiscriminator(s.resolution, s.d_channels)
    opt_g = torch.optim.Adam(generator.parameters(), lr=s.lr_g, betas=(s.beta1, s.beta2))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=s.lr_d, betas=(s.beta1, s.beta2))
    ema = EMA(generator, s.ema_decay)
    while True:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(block):
            batch = real[torch.randint(0, len(real), (batch_size,))]
            with torch.no_grad():
                fake = generator(torch.randn(batch_size, latent))
            real_logits, fake_logits = discriminator(batch), discriminator(fake)
            d_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + (
                F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            )
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            discriminator.requires_grad_(False)
            logits = discriminator(generator(torch.randn(batch_size, latent)))
            g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            discriminator.requires_grad_(True)
            ema.update()
            d_loss.item(), g_loss.item()  # a real loop logs its losses too
        yield time.perf_counter() - wall, time.process_time() - cpu


def engine_loop(image, block: int, out_dir: Path) -> Iterator[tuple[float, float]]:
    """The engine (`train()`, dcgan defaults) reporting every `block` steps; yields the (wall, CPU) seconds of each block.

    The clock runs from asking the event generator for more to receiving the next `Progress`, so the
    time the caller spends elsewhere between blocks is not counted.
    """
    config = TrainConfig(
        recipe="dcgan",
        out_dir=out_dir,
        steps=10**9,
        log_every=block,
        sample_every=0,
        checkpoint_every=10**9,
        augment=False,
    )
    events_ = train(config, [image])
    while True:
        wall, cpu = time.perf_counter(), time.process_time()
        event = next(events_)
        while not isinstance(event, events.Progress):
            wall, cpu = time.perf_counter(), time.process_time()  # the Started event precedes the first block
            event = next(events_)
        yield time.perf_counter() - wall, time.process_time() - cpu


def overhead(image, real: torch.Tensor, block: int, rounds: int, out_dir: Path) -> None:
    """Alternate blocks of the bare loop and the engine in one process and print their speed ratios.

    Alternating short blocks exposes both to the same load on a shared machine: drift over minutes
    cancels in each round's ratio. The first round is a warm-up and is not counted.
    """
    bare, engine = bare_loop(real, block), engine_loop(image, block, out_dir)
    next(bare), next(engine)
    times = [(next(bare), next(engine)) for _ in range(rounds)]
    images = block * DEFAULTS.batch_size
    for label, column in (("wall", 0), ("CPU", 1)):
        bare_s = [b[column] for b, _ in times]
        engine_s = [e[column] for _, e in times]
        ratios = sorted(b / e for b, e in zip(bare_s, engine_s))
        quartiles = statistics.quantiles(ratios, n=4)
        total = sum(bare_s) / sum(engine_s)
        verdict = "met" if total >= 0.95 else "not met"
        print(
            f"engine overhead, images per {label} second (dcgan defaults, batch {DEFAULTS.batch_size}, {rounds} "
            f"rounds of {block} steps each): bare {images * rounds / sum(bare_s):.1f}, engine "
            f"{images * rounds / sum(engine_s):.1f}, ratio of totals {total:.3f} (goal >= 0.95: {verdict}); "
            f"per-round ratio median {statistics.median(ratios):.3f}, quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}"
        )


def train_for(recipe: str, image, budget_s: float, out_dir: Path) -> tuple[int, Path]:
    """Train `recipe` with default settings until `budget_s` seconds of process CPU time have passed; (steps, checkpoint)."""
    config = TrainConfig(
        recipe=recipe, out_dir=out_dir, steps=10**7, checkpoint_every=10**9, sample_every=0, log_every=10
    )
    finished, _ = train_for_cpu_seconds(config, [image], budget_s)
    return finished.step, finished.checkpoint


def untrained_samples(recipe: str, n: int, normalization) -> np.ndarray:
    recipe_cls = get_recipe(recipe)
    torch.manual_seed(0)
    model = recipe_cls()
    model.build(parse(recipe_cls.settings_cls), torch.device("cpu"))
    return normalization.invert(model.sample(n, torch.Generator().manual_seed(0))[:, 0].numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, default=10, help="steps per timed block of each loop")
    parser.add_argument("--rounds", type=int, default=60, help="alternating (bare, engine) blocks timed")
    parser.add_argument("--budget", type=float, default=600.0, help="training CPU seconds per baseline")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-quality", action="store_true", help="measure the engine overhead only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    image = load_sample("mni152")
    normalization = percentile_normalization([image.array])
    dataset = SliceDataset([image], normalization, size=64)
    real = torch.stack([dataset[i] for i in range(len(dataset))])
    real_units = normalization.invert(real[:, 0].numpy())
    print(f"MNI152 axial slices kept: {len(dataset)} of {image.array.shape[0]}; torch threads: {args.threads}")

    with tempfile.TemporaryDirectory() as tmp:
        overhead(image, real, args.block, args.rounds, Path(tmp) / "overhead")
        if args.no_quality:
            return

        half = len(real_units) // 2
        floor = swd(real_units[:half], real_units[half:])["mean"]
        print(f"SWD real half vs real half: {floor:.1f}")
        for recipe in ("dcgan", "wgan-gp"):
            untrained = swd(real_units, untrained_samples(recipe, args.samples, normalization))["mean"]
            steps, checkpoint = train_for(recipe, image, args.budget, Path(tmp) / recipe)
            fake = generate(checkpoint, args.samples, seed=0, device="cpu").array
            trained = swd(real_units, fake)
            levels = ", ".join(f"{k}: {v:.1f}" for k, v in trained.items() if k != "mean")
            print(
                f"{recipe}: {steps} steps in {args.budget:.0f} CPU s; SWD mean {trained['mean']:.1f} ({levels}); "
                f"untrained generator {untrained:.1f}"
            )


if __name__ == "__main__":
    main()
