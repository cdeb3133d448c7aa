"""hrgan-dtcr evidence: DTCR ablation, frame-by-frame baselines, generation speed and peak memory.

1. Ablation on the real 120-frame ultrasound cine (pydicom-data): `hrgan-dtcr` with DTCR (linear
   lambda 0.1 -> 0.5, discriminator features: no VGG weights on this machine) and without
   (``dtcr_schedule=off``), trained for the same process CPU time from the same seed.
2. Baselines: `dcgan` and `wgan-gp` trained on the cine's frames for the same CPU time, sequences
   made of independent samples (frame by frame).
3. Against real clips (``ClipDataset`` of the cine, in data units) each model's sequences are
   compared by the temporal-consistency report (`medsynth.metrics.temporal`), SWD on all frames,
   and the HyperScore inputs (see `hyperscore_inputs`).
4. Speed: a 30-frame 256 x 256 sequence and 1024 x 1024 frames from the DTCR model; peak resident
   memory (``VmHWM`` of a fresh process) of one 4096 x 4096 frame generated in tiles, against one
   1024 x 1024 frame untiled and against the process after imports only.

Usage: ``python benchmarks/bench_hrgan.py [--cpu-seconds 75] [--resolution 64] [--workdir DIR]
[--models on,off,dcgan,wgan-gp] [--stage-steps 30] [--ramp-steps 100] [--reuse]``. Prints a Markdown
report. `--models` picks the training runs; with `--reuse`, runs already in `--workdir` are evaluated
without training again, so that runs can train in separate processes (one core each) and be
reported together. Training runs on one torch thread (fastest for these small models on a
shared 2-core machine); generation timings use torch's default threads.

``--speed-only [--checkpoint PATH]`` runs only step 4 (training one DTCR model first when no
checkpoint is given), with 1 and 2 torch threads, medians of `--repeats` runs after a warm-up, and
compares the generator's synthesis with `reference_synthesize`, the unfused NCHW implementation it
replaced, on the same weights and inputs in the same run (time ratio and largest difference).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import medsynth.training.recipes.hrgan_dtcr  # noqa: F401 - registers the recipe
from medsynth.data.datasets import ClipDataset
from medsynth.data.samples import load_sample
from medsynth.metrics import aggregate_v, hyperscore, swd
from medsynth.metrics.temporal import temporal_consistency
from medsynth.models.hrgan import SLOPE, HRGANGenerator
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.events import Finished, Progress
from medsynth.training.generate import generate, load_recipe
from medsynth.training.sequences import generate_sequences, input_grid
from medsynth.training.trainer import train

FRAMES = 8
SEQUENCES = 24
# VmHWM is the peak resident size of the child's own address space; ru_maxrss would also count the
# benchmark process's pages, which the child holds between fork and exec.
PEAK_CHILD = """
import json, re, sys, time, torch
import medsynth.training.recipes.hrgan_dtcr
from medsynth.training.sequences import generate_sequences
side, tile = int(sys.argv[2]), (int(sys.argv[3]) or None)
start = time.perf_counter()
if side:
    image = generate_sequences(sys.argv[1], 1, frames=1, resolution=side, device="cpu", tile=tile)
seconds = time.perf_counter() - start
hwm_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": seconds, "peak_mb": hwm_kb / 1024}))
"""


def hrgan_settings(resolution: int, dtcr: bool, stage_steps: int = 30, ramp_steps: int = 100) -> dict[str, Any]:
    return {
        "resolution": resolution, "base_resolution": resolution // 2, "frames": FRAMES, "batch_size": 4,
        "g_channels": 16, "d_channels": 16, "stage_steps": stage_steps, "fade_steps": stage_steps,
        "dtcr_ramp_steps": ramp_steps, "dtcr_features": "discriminator", "dtcr_schedule": "linear" if dtcr else "off",
    }  # fmt: skip


def train_for(
    recipe: str, settings: dict[str, Any], data: list, cpu_seconds: float, out_dir: Path
) -> tuple[Path, int, float]:
    """Train until `cpu_seconds` of process CPU time have passed; (checkpoint, steps, wall seconds).

    The result is also written to ``out_dir/run.json``, which `--reuse` reads instead of training again.
    """
    control = TrainControl()
    config = TrainConfig(recipe=recipe, out_dir=out_dir, settings=settings, steps=10**6, device="cpu", seed=0,
                         log_every=5, sample_every=0, checkpoint_every=10**6)  # fmt: skip
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for event in train(config, data, control):
        if isinstance(event, Progress) and time.process_time() - cpu0 > cpu_seconds:
            control.request_stop()
        if isinstance(event, Finished):
            result = (event.checkpoint, event.step, time.perf_counter() - wall0)
            (out_dir / "run.json").write_text(
                json.dumps({"checkpoint": str(result[0]), "steps": result[1], "wall_s": result[2]})
            )
            return result
    raise RuntimeError("training ended without a Finished event")


def reused_run(out_dir: Path) -> tuple[Path, int, float]:
    """The (checkpoint, steps, wall seconds) that `train_for` recorded in `out_dir`."""
    run = json.loads((out_dir / "run.json").read_text())
    return Path(run["checkpoint"]), run["steps"], run["wall_s"]


def real_clips(cine, checkpoint_path: Path, side: int) -> np.ndarray:
    """``(N, T, side, side)`` real clips of the cine in data units, as the recipe sees them (normalised, fitted)."""
    normalization = load_checkpoint(checkpoint_path).normalization
    dataset = ClipDataset([cine], normalization, side, FRAMES)
    return np.stack([normalization.invert(dataset[i][0].numpy()) for i in range(len(dataset))])


def sequence_metrics(real: np.ndarray, fake: np.ndarray, data_range: float) -> dict[str, float]:
    """Mean temporal report over real/fake clip pairs, and SWD of all frames."""
    reports = [
        temporal_consistency(real[k % len(real)], fake[k], data_range=data_range).summary() for k in range(len(fake))
    ]
    out = {key: float(np.mean([r[key] for r in reports])) for key in reports[0]}
    out["swd"] = swd(real.reshape(-1, *real.shape[-2:]), fake.reshape(-1, *fake.shape[-2:]), seed=0)["mean"]
    return out


def hyperscore_inputs(metrics: dict[str, float], floor: dict[str, float]) -> dict[str, float]:
    """Scores in (0, 1]: the real-vs-real value of each distance divided by the model's (1 = as good as real data)."""
    scores = {
        name: min(1.0, floor[name] / max(metrics[name], 1e-12))
        for name in ("swd", "diff_wasserstein", "flow_wasserstein")
    }
    v = aggregate_v(scores, {name: 1.0 for name in scores})
    return {**{f"s_{k}": s for k, s in scores.items()}, "V": v, "hyperscore": hyperscore(v)}


def peak_rss_mb(checkpoint: Path, side: int, tile: int) -> tuple[float, float]:
    """(peak resident MB, seconds) of a fresh process generating one `side` frame (0: imports only)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, str(checkpoint), str(side), str(tile)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result = json.loads(out)
    return result["peak_mb"], result["seconds"]


def reference_synthesize(generator: HRGANGenerator, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """The full-stage synthesis as first written (NCHW, both upsampling paths, upsample-then-project skips, no in-place updates)."""

    def norm(h: torch.Tensor) -> torch.Tensor:
        return h * torch.rsqrt(h.pow(2).mean(dim=1, keepdim=True) + 1e-8)

    def film(module, h: torch.Tensor) -> torch.Tensor:
        gamma, beta = module.affine(embedding)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + gamma) + beta

    x = F.leaky_relu(film(generator.input_film, norm(generator.input_conv(x))), SLOPE)
    for block in generator.blocks[: generator.n_base_blocks + generator.final_stage]:
        mix = torch.sigmoid(block.up.mix_logit)
        h = F.leaky_relu(norm(mix * block.up.transposed(x) + (1 - mix) * block.up.subpixel(x)), SLOPE)
        h = F.leaky_relu(film(block.film, norm(block.conv(h))), SLOPE)
        x = h + block.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    return torch.tanh(generator.to_image[generator.final_stage](x))


def median_seconds(run, repeats: int) -> float:
    """Median wall time of `run()` over `repeats` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(checkpoint: Path, repeats: int) -> None:
    """Generation speed against `reference_synthesize`, and peak memory, as a Markdown table."""
    recipe = load_recipe(load_checkpoint(checkpoint), "cpu")
    generator, trained = recipe.ema.module, recipe.settings.resolution
    print(f"\n### Generation speed (checkpoint {checkpoint}, trained at {trained} px)\n")
    print("| case | threads | reference s | now s | reference / now | max abs difference |")
    print("|---|---|---|---|---|---|")
    for frames, side in ((30, 256), (1, 1024)):
        content, noise = recipe.latents(1, frames, torch.Generator().manual_seed(0))
        with torch.no_grad():
            embedding = generator.embed(recipe.modality_tensor(1, recipe.settings.modality), frames)
            x = generator.input_map(generator.frame_latents(content, noise), embedding, input_grid(side, trained))
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                before = median_seconds(partial(reference_synthesize, generator, x, embedding), repeats)
                expected = reference_synthesize(generator, x, embedding)
            with torch.inference_mode():
                now = median_seconds(partial(generator.synthesize, x, embedding, generator.final_stage), repeats)
                error = (generator.synthesize(x, embedding, generator.final_stage) - expected).abs().max().item()
            print(
                f"| synthesis, {frames} x {side}x{side} | {threads} | {before:.3f} | {now:.3f} | {before / now:.2f} | {error:.1e} |"
            )
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for frames, side in ((30, 256), (2, 1024)):
            run = partial(generate_sequences, checkpoint, 1, frames=frames, resolution=side, device="cpu")
            seconds = median_seconds(run, repeats)
            print(
                f"| `generate_sequences`, {frames} x {side}x{side} (load, latents, data units) | {threads} | - | {seconds:.3f} | - | - |"
            )
    print()
    for label, side, tile in (("imports only", 0, 0), ("1024 untiled", 1024, 1024), ("4096 tiled (512)", 4096, 512)):
        mb, seconds = peak_rss_mb(checkpoint, side, tile)
        print(f"- peak RSS (VmHWM), fresh process, {label}: {mb:.0f} MB ({seconds:.1f} s, default threads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-seconds", type=float, default=75.0, help="process CPU time per training run")
    parser.add_argument("--resolution", type=int, default=64, help="training side length (64 or 128)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--speed-only", action="store_true", help="only generation speed and memory")
    parser.add_argument("--checkpoint", type=Path, default=None, help="hrgan-dtcr checkpoint for --speed-only")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per speed figure (median)")
    parser.add_argument("--models", default="on,off,dcgan,wgan-gp", help="training runs: on, off, dcgan, wgan-gp")
    parser.add_argument("--stage-steps", type=int, default=30, help="hrgan stage_steps and fade_steps")
    parser.add_argument("--ramp-steps", type=int, default=100, help="hrgan dtcr_ramp_steps")
    parser.add_argument("--reuse", action="store_true", help="evaluate the runs already trained in --workdir")
    parser.add_argument(
        "--train-only", action="store_true", help="train the runs and stop (evaluate later with --reuse)"
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_hrgan_"))
    side = args.resolution
    threads = torch.get_num_threads()
    print(f"load average at start: {os.getloadavg()}; torch threads {threads}; cores {os.cpu_count()}", flush=True)

    cine = load_sample("us_cine")
    if args.speed_only:
        checkpoint = args.checkpoint
        if checkpoint is None:
            torch.set_num_threads(1)
            checkpoint = train_for(
                "hrgan-dtcr", hrgan_settings(side, True), [cine], args.cpu_seconds, workdir / "hrgan"
            )[0]
        speed(checkpoint, args.repeats)
        print(f"\nload average at end: {os.getloadavg()}")
        return
    torch.set_num_threads(1)
    runs: dict[str, tuple[Path, int, float]] = {}
    hrgan = partial(hrgan_settings, side, stage_steps=args.stage_steps, ramp_steps=args.ramp_steps)
    candidates = {
        "on": ("hrgan-dtcr (DTCR on)", "hrgan-dtcr", hrgan(dtcr=True)),
        "off": ("hrgan-dtcr (DTCR off)", "hrgan-dtcr", hrgan(dtcr=False)),
        "dcgan": (
            "dcgan (frame by frame)",
            "dcgan",
            {"resolution": side, "batch_size": 32, "g_channels": 16, "d_channels": 16},
        ),
        "wgan-gp": ("wgan-gp (frame by frame)", "wgan-gp", {"resolution": side, "batch_size": 32}),
    }
    for key in args.models.split(","):
        name, recipe, settings = candidates[key]
        out_dir = workdir / key
        if args.reuse:
            runs[name] = reused_run(out_dir)
        else:
            runs[name] = train_for(recipe, settings, [cine], args.cpu_seconds, out_dir)
        print(
            f"{'reused' if args.reuse else 'trained'} {name}: {runs[name][1]} steps, {runs[name][2]:.0f} s wall",
            flush=True,
        )
    if args.train_only:
        return

    on_checkpoint = next(checkpoint for name, (checkpoint, _, _) in runs.items() if name.startswith("hrgan"))
    real = real_clips(cine, on_checkpoint, side)
    normalization = load_checkpoint(on_checkpoint).normalization
    data_range = normalization.high - normalization.low
    half = len(real) // 2
    floor = sequence_metrics(real[:half], real[half:], data_range)
    results = {"real vs real (floor)": floor}
    for name, (checkpoint, _, _) in runs.items():
        if name.startswith("hrgan"):
            fake = generate_sequences(checkpoint, SEQUENCES, seed=1, device="cpu").array.transpose(1, 0, 2, 3)
        else:
            fake = generate(checkpoint, SEQUENCES * FRAMES, seed=1, device="cpu").array.reshape(
                SEQUENCES, FRAMES, side, side
            )
        results[name] = sequence_metrics(real, fake, data_range)
        results[name].update(hyperscore_inputs(results[name], floor))

    torch.set_num_threads(threads)
    timings = {}
    for label, frames, res in (("30 x 256x256", 30, 256), ("2 x 1024x1024", 2, 1024)):
        generate_sequences(on_checkpoint, 1, frames=2, resolution=256, device="cpu")  # warm-up
        start = time.perf_counter()
        generate_sequences(on_checkpoint, 1, frames=frames, resolution=res, device="cpu")
        timings[label] = time.perf_counter() - start
    peaks = {
        "imports only": peak_rss_mb(on_checkpoint, 0, 0),
        "1024 untiled": peak_rss_mb(on_checkpoint, 1024, 1024),
        "4096 tiled (512)": peak_rss_mb(on_checkpoint, 4096, 512),
    }
    report(args, side, runs, results, timings, peaks)


def report(args, side, runs, results, timings, peaks) -> None:
    print(f"\nload average at end: {os.getloadavg()}")
    print(
        f"\n### Ablation and baselines ({side}x{side}, {FRAMES} frames, {args.cpu_seconds:g} CPU s per run, seed 0)\n"
    )
    print(
        "| model | steps | wall s | SWD | diff W1 | flow W1 | warp err fake (real) | mean abs diff fake (real) | s_swd | s_diff | s_flow | V | HyperScore |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m in results.items():
        steps, wall = (runs[name][1], f"{runs[name][2]:.0f}") if name in runs else ("-", "-")
        scores = (
            [f"{m[k]:.3f}" for k in ("s_swd", "s_diff_wasserstein", "s_flow_wasserstein", "V")]
            if "V" in m
            else ["-"] * 4
        )
        hs = f"{m['hyperscore']:.2f}" if "hyperscore" in m else "-"
        print(
            f"| {name} | {steps} | {wall} | {m['swd']:.1f} | {m['diff_wasserstein']:.4f} | {m['flow_wasserstein']:.4f} "
            f"| {m['warp_error_fake']:.4f} ({m['warp_error_real']:.4f}) | {m['mean_abs_diff_fake']:.4f} ({m['mean_abs_diff_real']:.4f}) "
            f"| {' | '.join(scores)} | {hs} |"
        )
    on, off = results.get("hrgan-dtcr (DTCR on)"), results.get("hrgan-dtcr (DTCR off)")
    if on is None or off is None:
        return
    print("\nDTCR on / off ratios:")
    for key in ("warp_error_fake", "mean_abs_diff_fake", "diff_wasserstein", "flow_wasserstein", "swd"):
        print(f"- {key}: {on[key] / off[key]:.3f}")
    print("\n### Generation speed and memory\n")
    for label, seconds in timings.items():
        print(f"- {label}: {seconds:.2f} s")
    for label, (mb, seconds) in peaks.items():
        print(f"- peak RSS, {label}: {mb:.0f} MB ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
