"""cyclegan evidence: unpaired MR <-> CT translation trained for a CPU budget on the data that ships.

Data: domain A (MR) is the MNI152 2009a T1 template (nilearn), axial slices 40-149: the even ones
train, the odd ones are held out; domain B (CT) is the three distinct CT slices that pydicom and
pydicom-data ship (CT_small, 693_UNCR, J2K_pixelrep_mismatch), in HU. No paired CT exists for the
template, so translation accuracy cannot be measured here; what can be:

- cycle consistency on the inputs' own grids, through `medsynth.training.translate` (so resampling
  to and from the training size is included): PSNR and SSIM of A -> B -> A against the held-out MR
  slices (data range: A's intensity map) and of B -> A -> B against the CT slices (B's map);
- how CT-like the A -> B translations are: the 1D Wasserstein distance (HU) between the intensity
  histogram of the translated held-out slices and that of the real CT slices;
- translation time per slice: CPU seconds of `translate` on the held-out slab, one torch thread.

Baselines in the same run: the same generators at their initial weights (step 0, same seed), and,
for the histogram, a linear remap of A's intensity map onto B's (normalise with A's, invert with B's).
The run trains on one torch thread until it has used `--budget` seconds of its own CPU time; the
learning rates stay constant (the run's length is not known in advance). Resolution 64, widths 16,
4 residual blocks, batch 1.

    nice -n 10 python benchmarks/bench_cyclegan.py [--budget 240] [--seed 0] [--json bench_cyclegan.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from budget import train_for_cpu_seconds
from pydicom.data import get_testdata_file
from scipy.stats import wasserstein_distance

from medsynth.data.domains import TwoDomains
from medsynth.data.samples import load_sample
from medsynth.io import read_image
from medsynth.io.image import MedImage
from medsynth.metrics.fidelity import psnr, ssim
from medsynth.settings import parse
from medsynth.training.checkpoint import Checkpoint, checkpoint_settings, load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.events import Finished
from medsynth.training.recipe import get_recipe
from medsynth.training.translate import translate

CT_FILES = ("CT_small.dcm", "693_UNCR.dcm", "J2K_pixelrep_mismatch.dcm")
SETTINGS = {"resolution": 64, "batch_size": 1, "g_channels": 16, "blocks": 4, "d_channels": 16, "lr_decay_from": 1.0}
PAPER_SIZE = {"resolution": 256, "g_channels": 64, "blocks": 9}
"""The generator of Zhu et al. at 256 px, timed (untrained) beside ours for scale."""


def domains() -> tuple[MedImage, MedImage, list[MedImage]]:
    """MR training slab (even slices 40-148), MR held-out slab (odd slices 41-149), the CT slices."""
    mr = load_sample("mni152")
    slab = np.asarray(mr.array[40:150], dtype=np.float32)
    spacing = (2 * mr.spacing[0], *mr.spacing[1:])
    train_mr = mr.with_array(np.ascontiguousarray(slab[0::2]), spacing=spacing, modality="MR", name="t1 even")
    held_out = mr.with_array(np.ascontiguousarray(slab[1::2]), spacing=spacing, modality="MR", name="t1 odd")
    cts = [read_image(get_testdata_file(name, download=False)) for name in CT_FILES]
    return train_mr, held_out, cts


def train_for(budget: float, seed: int, out_dir: Path, data: TwoDomains) -> tuple[Finished, float]:
    """Train until `budget` CPU seconds of this process are used (then stop with a checkpoint); with the seconds used."""
    config = TrainConfig(recipe="cyclegan", out_dir=out_dir, settings=SETTINGS, steps=10**7, device="cpu", seed=seed,
                         checkpoint_every=10**9, sample_every=0, log_every=50)  # fmt: skip
    return train_for_cpu_seconds(config, data, budget)


def initial(trained: Checkpoint, seed: int) -> Checkpoint:
    """The same generators at their initial weights: built after the seed the trainer sets before `build`."""
    recipe = get_recipe(trained.recipe)()
    torch.manual_seed(seed)
    recipe.build(checkpoint_settings(trained), torch.device("cpu"))
    return Checkpoint(recipe=trained.recipe, settings=trained.settings, step=0, normalization=trained.normalization,
                      normalization_b=trained.normalization_b, data=trained.data, state=recipe.state_dict())  # fmt: skip


def evaluate(checkpoint: Checkpoint, held_out: MedImage, cts: list[MedImage]) -> dict[str, float]:
    """Cycle PSNR/SSIM both ways, the CT-likeness of A -> B, and CPU seconds per translated slice."""
    map_a, map_b = checkpoint.normalization, checkpoint.normalization_b
    start = time.process_time()
    to_ct = translate(checkpoint, [held_out], "a2b", device="cpu")
    per_slice = (time.process_time() - start) / held_out.array.shape[0]
    back = translate(checkpoint, [to_ct], "b2a", device="cpu").array
    real_a = np.clip(held_out.array, map_a.low, map_a.high)
    result = {
        "cycle_a_psnr": float(np.mean(psnr(real_a, back, data_range=(map_a.low, map_a.high), spatial_dims=2))),
        "cycle_a_ssim": float(np.mean(ssim(real_a, back, data_range=(map_a.low, map_a.high), spatial_dims=2))),
        "hist_w1_hu": histogram_distance(to_ct.array, cts, map_b),
        "s_per_slice": per_slice,
    }
    psnrs, ssims = [], []
    for ct in cts:
        cycled = translate(checkpoint, [translate(checkpoint, [ct], "b2a", device="cpu")], "a2b", device="cpu").array
        real_b = np.clip(np.asarray(ct.array, dtype=np.float32), map_b.low, map_b.high)
        span = (map_b.low, map_b.high)
        psnrs.append(float(psnr(real_b[None], cycled[None], data_range=span, spatial_dims=2)[0]))
        ssims.append(float(ssim(real_b[None], cycled[None], data_range=span, spatial_dims=2)[0]))
    return {**result, "cycle_b_psnr": float(np.mean(psnrs)), "cycle_b_ssim": float(np.mean(ssims))}


def histogram_distance(translated: np.ndarray, cts: list[MedImage], map_b) -> float:
    """1D Wasserstein distance (HU) of translated and real CT intensities, both clipped to B's map."""
    real = np.concatenate([np.asarray(ct.array, dtype=np.float32).ravel() for ct in cts])
    clip = (map_b.low, map_b.high)
    return float(wasserstein_distance(np.clip(translated.ravel(), *clip), np.clip(real, *clip)))


def paper_size_seconds_per_slice(rounds: int = 3) -> float:
    """CPU seconds of one forward pass of the paper-size generator on a 256 px slice (untrained)."""
    recipe = get_recipe("cyclegan")()
    recipe.build(parse(recipe.settings_cls, PAPER_SIZE), torch.device("cpu"))
    slices = torch.zeros(4, 1, 256, 256)
    recipe.translate(slices, "a2b")  # warm-up
    start = time.process_time()
    for _ in range(rounds):
        recipe.translate(slices, "a2b")
    return (time.process_time() - start) / (rounds * len(slices))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=240.0, help="training CPU seconds")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--json", type=Path, default=Path("bench_cyclegan.json"), help="where to write the results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average at start {os.getloadavg()}")
    train_mr, held_out, cts = domains()
    with tempfile.TemporaryDirectory() as workdir:
        finished, cpu = train_for(args.budget, args.seed, Path(workdir) / "run", TwoDomains(a=[train_mr], b=cts))
        trained = load_checkpoint(finished.checkpoint)
    untrained = initial(trained, args.seed)
    rows = {"trained": evaluate(trained, held_out, cts), "initial weights": evaluate(untrained, held_out, cts)}
    remapped = trained.normalization_b.invert(trained.normalization.apply(held_out.array))
    rows["linear remap A -> B"] = {"hist_w1_hu": histogram_distance(remapped, cts, trained.normalization_b)}
    results = {"steps": finished.step, "train_cpu_s": cpu, "settings": SETTINGS, "rows": rows,
               "paper_size_s_per_slice_256px": paper_size_seconds_per_slice(), "load_average_end": os.getloadavg()}  # fmt: skip
    args.json.write_text(json.dumps(results, indent=1))
    print(f"\ntrained {finished.step:,} steps in {cpu:.0f} CPU s; held-out MR slices {held_out.array.shape}, "
          f"{len(cts)} CT slices\n")
    print("| model | A->B->A PSNR dB / SSIM | B->A->B PSNR dB / SSIM | HU histogram W1 to real CT | CPU ms per slice |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        cycle_a = f"{r['cycle_a_psnr']:.2f} / {r['cycle_a_ssim']:.3f}" if "cycle_a_psnr" in r else "-"
        cycle_b = f"{r['cycle_b_psnr']:.2f} / {r['cycle_b_ssim']:.3f}" if "cycle_b_psnr" in r else "-"
        ms = f"{1e3 * r['s_per_slice']:.1f}" if "s_per_slice" in r else "-"
        print(f"| {name} | {cycle_a} | {cycle_b} | {r['hist_w1_hu']:.0f} | {ms} |")
    print(f"\npaper-size generator (64 ch, 9 blocks) forward at 256 px: "
          f"{1e3 * results['paper_size_s_per_slice_256px']:.0f} CPU ms per slice")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
