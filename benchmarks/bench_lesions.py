"""Lesion synthesis: SinGAN training time and realism, background preservation, seam visibility.

Run: ``python benchmarks/bench_lesions.py [--threads 1] [--iterations N] [--seed S] [--out DIR] [--train-only
[--consingan [--consingan-iterations M]]]``

SinGAN trains through the training engine (`train_singan` runs the ``singan`` recipe with
`medsynth.training.trainer.train`). ``--train-only`` measures part 1's training time, the
reconstruction RMSE and the SWD of 64 samples against the crop, and skips the rest. With
``--consingan`` it then trains the ConSinGAN-style variant on the same crop in the same process
(``concurrent_scales=3``, ``lr_scale=0.1``, `M` rounds per scale, by default half of `N` as
ConSinGAN halves SinGAN's schedule) and reports the same figures with their ratios to classic SinGAN.

1. Train SinGAN with its default settings on a 48x48 crop of the real CT slice (pydicom's
   CT_small.dcm, HU) around the vertebral foramen (a round, lesion-like structure); report the wall
   time, and as baseline the time the reference schedule (2000 rounds per scale) would take at the
   speed of a 10-rounds-per-scale run in the same process (x200).
2. Lesion realism: SWD (`medsynth.metrics.swd`) of 64 SinGAN samples against the real crop, and,
   as baselines, of 64 other 48x48 patches of the same slice and of the reconstruction.
3. Background preservation: fuse 3 lesions into the CT slice; SSIM between the fused and the
   original image outside the lesion masks (the seam band included), outside masks and seams, and
   over the whole image.
4. Seam visibility: mean Sobel gradient magnitude on the seam band divided by its mean over the
   permissible tissue, for the published fusion, the feathered blend and, as baseline, the raw
   paste without blending (``np.where(R_lesion, 0, background) + I_canvas``, no seam smoothing);
   1.0 = as sharp as real tissue.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from medsynth.data.samples import load_sample
from medsynth.lesions.crop import lesion_crop
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.fusion import fuse, lesion_canvas
from medsynth.lesions.placement import sample_placements
from medsynth.lesions.singan_training import (
    LesionGenerator,
    SinGANRunOptions,
    SinGANSettings,
    crop_tensor,
    sample_lesions,
    train_singan,
    train_to_end,
)
from medsynth.metrics.swd import swd
from medsynth.training.events import Finished, Progress

CROP_BOX = (24, 36, 72, 84)  # 48x48 px around the vertebral foramen of CT_small


def reference_schedule_seconds(values: np.ndarray, mask: np.ndarray, rounds: int = 10) -> float:
    """Seconds the reference schedule (2000 rounds per scale) would take, from a run of `rounds` rounds per scale."""
    start = time.perf_counter()
    train_to_end(values, mask, SinGANSettings(iterations=rounds), run=SinGANRunOptions(log_every=rounds))
    return (time.perf_counter() - start) * 2000 / rounds


def timed_training(
    values: np.ndarray, mask: np.ndarray, settings: SinGANSettings, seed: int, path: Path
) -> tuple[LesionGenerator, float]:
    """Train SinGAN on the crop through the engine, printing progress; the trained generator and the wall time (s)."""
    start = time.perf_counter()
    events = train_singan(values, mask, settings, run=SinGANRunOptions(seed=seed), checkpoint=path)
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value, time.perf_counter() - start
        if isinstance(event, Progress) and event.step % 250 == 0:
            print(f"  step {event.step}/{event.total_steps} ({event.phase}) rec {event.losses['rec']:.4f} ({time.perf_counter() - start:.0f} s)")
        if isinstance(event, Finished):
            print(f"  finished: {event.reason} at step {event.step}")


def realism(trained: LesionGenerator, values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Reconstruction RMSE of the image channel (normalised) and SWD x1e3 of 64 samples (seed 1) vs the crop (HU)."""
    real, _ = crop_tensor(values, mask)
    rec_rmse = float((trained.model.reconstruct()[0, 0] - real[0, 0]).pow(2).mean().sqrt())
    samples = np.stack([l.values for l in sample_lesions(trained, 64, seed=1)])
    return rec_rmse, swd(values[None], samples)["mean"]


def seam_ratio(fused: np.ndarray, band: np.ndarray, tissue: np.ndarray) -> float:
    grad = np.hypot(ndimage.sobel(fused, axis=0), ndimage.sobel(fused, axis=1))
    return float(grad[band].mean() / grad[tissue].mean())


def compare_consingan(values: np.ndarray, mask: np.ndarray, args: argparse.Namespace, classic: tuple[float, float, float]) -> None:
    """Train the ConSinGAN-style variant on the same crop and print its figures beside classic SinGAN's."""
    iterations = args.consingan_iterations or max(1, args.iterations // 2)
    settings = SinGANSettings(iterations=iterations, concurrent_scales=3, lr_scale=0.1)
    trained, train_s = timed_training(values, mask, settings, args.seed, args.out / "lesion-consingan.safetensors")
    rec_rmse, sample_swd = realism(trained, values, mask)
    print(f"ConSinGAN-style (concurrent_scales 3, lr_scale 0.1), {trained.scales} scales x {iterations} rounds: "
          f"{train_s:.0f} s, load {os.getloadavg()}")
    print(f"reconstruction RMSE (normalised): {rec_rmse:.4f}; SWD x1e3 of 64 samples vs the crop: {sample_swd:.1f}")
    time_ratio, rec_ratio, swd_ratio = train_s / classic[0], rec_rmse / classic[1], sample_swd / classic[2]
    print(f"ConSinGAN-style / classic: time {time_ratio:.2f}x, reconstruction RMSE {rec_ratio:.2f}x, SWD {swd_ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--iterations", type=int, default=SinGANSettings().iterations)
    parser.add_argument("--seed", type=int, default=0, help="seed of the SinGAN runs (weights and noise)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_lesions"))
    parser.add_argument("--train-only", action="store_true", help="time the default SinGAN training only")
    parser.add_argument("--consingan", action="store_true", help="with --train-only: compare the ConSinGAN-style variant")
    parser.add_argument("--consingan-iterations", type=int, default=None, help="its rounds per scale (default: half of --iterations)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, load {os.getloadavg()}")

    ct = load_sample("ct_slice")
    plane = np.asarray(ct.array, dtype=np.float32)
    values, mask = lesion_crop(plane, CROP_BOX)
    settings = SinGANSettings(iterations=args.iterations)

    trained, train_s = timed_training(values, mask, settings, args.seed, args.out / "lesion.safetensors")
    print(f"SinGAN default training, 48x48 crop, {trained.scales} scales x {settings.iterations} rounds: {train_s:.0f} s "
          f"(goal < 600 s: {'met' if train_s < 600 else 'NOT met'}), load {os.getloadavg()}")
    rec_rmse, sample_swd = realism(trained, values, mask)
    print(f"reconstruction RMSE (normalised): {rec_rmse:.4f}; SWD x1e3 of 64 samples vs the crop: {sample_swd:.1f}")
    if args.train_only:
        if args.consingan:
            compare_consingan(values, mask, args, (train_s, rec_rmse, sample_swd))
        return
    reference_s = reference_schedule_seconds(values, mask)
    print(f"reference schedule (2000 rounds/scale), extrapolated: {reference_s:.0f} s; default/reference = {train_s / reference_s:.3f}")

    rng = np.random.default_rng(0)
    corners = rng.integers(0, 128 - 48, size=(64, 2))
    other_patches = np.stack([plane[y : y + 48, x : x + 48] for y, x in corners])
    rec_hu = trained.normalization.invert(trained.model.reconstruct()[0, 0].numpy())
    print(f"SWD x1e3 vs the real crop: SinGAN samples {sample_swd:.1f}; "
          f"baselines: other patches of the slice {swd(values[None], other_patches)['mean']:.1f}, "
          f"reconstruction {swd(values[None], rec_hu[None])['mean']:.1f}")

    permissible = bootstrap_danger(ct).astype(bool)
    lesions = []
    for seed in range(2, 40):
        lesion = sample_lesions(trained, 1, seed=seed, size=0.5)[0]
        if lesion.mask.any():
            lesions.append(lesion)
        if len(lesions) == 3:
            break
    centres = sample_placements(permissible, [l.mask for l in lesions], np.random.default_rng(0), min_spacing=10)
    data_range = float(plane.max() - plane.min())
    tissue = ndimage.binary_erosion(permissible, iterations=3)
    canvas, labels = lesion_canvas(plane.shape, lesions, centres)
    raw_paste = (np.where(labels > 0, 0.0, plane) + canvas).astype(np.float32)
    published = fuse(plane, lesions, centres)
    fused = {"without blending (raw paste)": raw_paste, "published": published.image}
    fused["feather"] = fuse(plane, lesions, centres, blend="feather").image
    outside = published.labels == 0
    tissue_here = tissue & outside & ~published.seam
    ratios = {}
    for name, image in fused.items():
        _, ssim_map = structural_similarity(plane, image, data_range=data_range, full=True)
        ratios[name] = seam_ratio(image, published.seam, tissue_here)
        print(f"{name}: SSIM outside lesion masks (seam included) {ssim_map[outside].mean():.4f}, "
              f"outside masks and seam {ssim_map[outside & ~published.seam].mean():.4f}, global {ssim_map.mean():.4f}; "
              f"seam gradient / tissue gradient {ratios[name]:.2f}")
    raw = ratios["without blending (raw paste)"]
    print(f"seam visibility vs raw paste: published {ratios['published'] / raw:.2f}x, feather {ratios['feather'] / raw:.2f}x")


if __name__ == "__main__":
    main()
