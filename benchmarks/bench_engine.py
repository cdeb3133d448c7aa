"""Training engine benchmark: overhead against a bare PyTorch loop, and baseline quality after a CPU budget.

1. Engine overhead: images/s of `medsynth.training.trainer.train` running the `dcgan` recipe versus
   a bare PyTorch loop of the same networks, optimizers, loss, EMA update, batch size and number of
   steps, on the same MNI152 axial slices, in the same process. After one unmeasured pair, runs
   alternate (bare, engine, ...) `--repeats` times and the medians are compared, per wall second and
   per CPU second of the process (the latter is immune to other processes taking the cores of a
   shared machine). Goal: the engine within 5 % of the bare loop.
2. Baseline quality: `dcgan` and `wgan-gp` (default settings, 64x64) each train for `--budget`
   seconds of wall time on the MNI152 axial slices, then 1,000 samples of the EMA generator are
   compared with the real slices by SWD (`medsynth.metrics.swd`, x1e3, lower is better). For scale,
   the same figure is given for an untrained generator and for two halves of the real slices.

    python benchmarks/bench_engine.py [--steps 100] [--repeats 3] [--budget 180] [--threads 1] [--no-quality]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.datasets import SliceDataset
from medsynth.data.normalization import percentile_normalization
from medsynth.data.samples import load_sample
from medsynth.metrics.swd import swd
from medsynth.models.dcgan import DCGANDiscriminator, DCGANGenerator
from medsynth.models.ema import EMA
from medsynth.settings import parse
from medsynth.training import events
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.generate import generate
from medsynth.training.recipe import get_recipe
from medsynth.training.recipes.dcgan import DCGANSettings
from medsynth.training.trainer import train

WARMUP = 10


DEFAULTS = DCGANSettings()


def bare_loop_rate(real: torch.Tensor, steps: int, seed: int = 0) -> tuple[float, float]:
    """Images per wall second and per CPU second of a plain DCGAN loop with the recipe's defaults."""
    s = DEFAULTS
    batch_size, latent = s.batch_size, s.latent_dim
    torch.manual_seed(seed)
    generator = DCGANGenerator(s.resolution, latent, s.g_channels)
    discriminator = DCGANDiscriminator(s.resolution, s.d_channels)
    opt_g = torch.optim.Adam(generator.parameters(), lr=s.lr_g, betas=(s.beta1, s.beta2))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=s.lr_d, betas=(s.beta1, s.beta2))
    ema = EMA(generator, s.ema_decay)
    start = cpu_start = 0.0
    for step in range(WARMUP + steps):
        if step == WARMUP:
            start, cpu_start = time.perf_counter(), time.process_time()
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
    images = steps * batch_size
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


def engine_rate(image, steps: int, out_dir: Path) -> tuple[float, float]:
    """Images per wall and per CPU second of the engine between the reports at steps WARMUP and WARMUP + steps."""
    config = TrainConfig(
        recipe="dcgan",
        out_dir=out_dir,
        steps=WARMUP + steps,
        log_every=WARMUP,
        sample_every=0,
        checkpoint_every=10**9,
        augment=False,
    )
    stamps = {}
    for event in train(config, [image]):
        if isinstance(event, events.Progress):
            stamps[event.step] = (time.perf_counter(), time.process_time())
    (wall0, cpu0), (wall1, cpu1) = stamps[WARMUP], stamps[WARMUP + steps]
    images = steps * DEFAULTS.batch_size
    return images / (wall1 - wall0), images / (cpu1 - cpu0)


def train_for(recipe: str, image, budget_s: float, out_dir: Path) -> tuple[int, Path]:
    """Train `recipe` with default settings until `budget_s` seconds have passed; (steps, checkpoint)."""
    control = TrainControl()
    config = TrainConfig(
        recipe=recipe, out_dir=out_dir, steps=10**7, checkpoint_every=10**9, sample_every=0, log_every=50
    )
    timer = threading.Timer(budget_s, control.request_stop)
    timer.start()
    finished = [e for e in train(config, [image], control) if isinstance(e, events.Finished)][0]
    timer.cancel()
    return finished.step, finished.checkpoint


def untrained_samples(recipe: str, n: int, normalization) -> np.ndarray:
    recipe_cls = get_recipe(recipe)
    torch.manual_seed(0)
    model = recipe_cls()
    model.build(parse(recipe_cls.settings_cls), torch.device("cpu"))
    return normalization.invert(model.sample(n, torch.Generator().manual_seed(0))[:, 0].numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per overhead run")
    parser.add_argument("--repeats", type=int, default=3, help="overhead runs of each kind")
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds per baseline")
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
        # One unmeasured pair first: the first runs in a process pay one-time initialisation.
        bare_loop_rate(real, WARMUP)
        engine_rate(image, WARMUP, Path(tmp) / "warmup")
        bare, engine = [], []
        for k in range(args.repeats):
            bare.append(bare_loop_rate(real, args.steps))
            engine.append(engine_rate(image, args.steps, Path(tmp) / f"overhead{k}"))
            print(
                f"  run {k + 1}: bare {bare[-1][0]:.1f} img/s ({bare[-1][1]:.1f} per CPU s), "
                f"engine {engine[-1][0]:.1f} img/s ({engine[-1][1]:.1f} per CPU s)"
            )
        for label, column in (("wall", 0), ("CPU", 1)):
            b = statistics.median(rate[column] for rate in bare)
            e = statistics.median(rate[column] for rate in engine)
            verdict = "met" if e / b >= 0.95 else "not met"
            print(
                f"engine overhead, images per {label} second (dcgan defaults, batch {DEFAULTS.batch_size}, "
                f"{args.steps} steps, median of {args.repeats}): bare {b:.1f}, engine {e:.1f}, "
                f"ratio {e / b:.3f} (goal >= 0.95: {verdict})"
            )
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
                f"{recipe}: {steps} steps in {args.budget:.0f} s; SWD mean {trained['mean']:.1f} ({levels}); "
                f"untrained generator {untrained:.1f}"
            )


if __name__ == "__main__":
    main()
