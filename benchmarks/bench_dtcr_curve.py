"""DTCR ablation as a curve over training: hrgan-dtcr with DTCR on and off, same seeds, every checkpoint evaluated.

Each arm (``on``: lambda rising linearly, by default 0.1 -> 0.5; ``off``: ``dtcr_schedule=off``)
trains on the real 120-frame ultrasound cine (pydicom-data) for every seed, with the networks of
`bench_hrgan.py` (`hrgan_settings`: widths 16, batch 4, 8 frames, base resolution half the final one), until
`--steps` or `--cpu-seconds` of process CPU time, whichever comes first, writing a checkpoint every
`--checkpoint-every` steps. ``log.jsonl`` in each run folder records every checkpoint with the step,
the process CPU and wall seconds so far and the load average, and the loss terms every
`--log-every` steps. A run that finds checkpoints in its folder resumes from the last one and counts
the CPU time already spent, so a budget can be raised and an interrupted run continued.

Every checkpoint is then evaluated against the cine's real clips in data units, as `bench_hrgan.py`
does: the temporal report of `medsynth.metrics.temporal` (warping error and mean frame difference of
the synthetic sequences against the real ones, frame-difference and flow W1 to the real
distributions), SWD of all frames, and the HyperScore inputs. Results are cached in each run's
``evaluation.json``. The Markdown report has one row per checkpoint and run, the on/off ratios at
equal steps (means over the seeds) and the verdict on the claim.

One line, every run in turn, then the evaluation (docs/hrgan-dtcr.md, "Reproducing the DTCR ablation")::

    python benchmarks/bench_dtcr_curve.py --workdir runs/dtcr128 --resolution 128 --steps 20000 \\
        --checkpoint-every 1000 --stage-steps 1000 --ramp-steps 10000 --seeds 0,1 --device cuda --features vgg16

Side by side on a shared CPU (docs/benchmarks.md): one process per arm and seed, e.g.
``--train-only --arms on --seeds 0 --threads 1 --cpu-seconds 3600``, then ``--evaluate-only``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench_hrgan import hrgan_settings, hyperscore_inputs, real_clips, sequence_metrics
from medsynth.data.samples import load_sample
from medsynth.losses.dtcr import FeatureFn, dtcr_loss, linear_weight, vgg_features
from medsynth.models.vgg import load_vgg
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.events import CheckpointSaved, Finished, Progress
from medsynth.training.generate import load_recipe
from medsynth.training.recipes.hrgan_dtcr import DTCR_PATCH, growth_schedule, real_at_stage
from medsynth.training.sequences import generate_sequences
from medsynth.training.trainer import train

ARMS = ("on", "off")
SAMPLE_SEED = 1
"""Latents of the evaluated sequences, the same for every checkpoint: the curve shows training, not sampling."""
SIGNAL_SEQUENCES = 8
"""Generated sequences on which `training_signals` weighs the DTCR gradient against the adversarial one."""
FLICKER_LEVEL = 0.9
"""The no-DTCR model moves like the real cine once its mean frame difference is this fraction of the real one."""
CLAIM_RATIO = 0.7
"""The claim: DTCR lowers the warping error (flicker) by at least 30 % ..."""
SWD_TOLERANCE = 1.1
"""... without worsening SWD by more than 10 % (issue 5's goal)."""
RATIO_KEYS = {
    "warp_error_fake": "warping error",
    "mean_abs_diff_fake": "frame diff",
    "diff_wasserstein": "frame-diff W1",
    "flow_wasserstein": "flow W1",
    "swd": "SWD",
}
Runs = dict[tuple[str, int], list[dict[str, Any]]]
"""Evaluated checkpoint records by (arm, seed)."""


def run_dir(workdir: Path, arm: str, seed: int) -> Path:
    return workdir / f"{arm}-seed{seed}"


def read_log(folder: Path) -> list[dict[str, Any]]:
    """The records of ``folder/log.jsonl`` (none when the run has not started)."""
    path = folder / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checkpoints(folder: Path) -> list[dict[str, Any]]:
    """The checkpoint records of a run, by step (a resumed run's repeated step keeps its first record)."""
    seen: dict[int, dict[str, Any]] = {}
    for record in read_log(folder):
        if record["event"] == "checkpoint":
            seen.setdefault(record["step"], record)
    return [seen[step] for step in sorted(seen)]


def checkpoint_file(folder: Path, record: dict[str, Any]) -> Path:
    """The checkpoint of a log record, looked up in the run's folder so that a workdir can be moved."""
    return folder / Path(record["checkpoint"]).name


def arm_settings(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = hrgan_settings(args.resolution, arm == "on", args.stage_steps, args.ramp_steps)
    settings["dtcr_features"] = args.features
    settings["dtcr_weight_start"], settings["dtcr_weight_end"] = args.dtcr_weights
    return settings


def train_arm(arm: str, seed: int, args: argparse.Namespace, cine) -> dict[str, Any]:
    """Train (or resume) one run until its step or CPU budget; its last checkpoint record."""
    folder = run_dir(args.workdir, arm, seed)
    folder.mkdir(parents=True, exist_ok=True)
    done = checkpoints(folder)
    cpu_before = done[-1]["cpu_s"] if done else 0.0
    wall_before = done[-1]["wall_s"] if done else 0.0
    if done and (done[-1]["step"] >= args.steps or cpu_before >= args.cpu_seconds):
        return done[-1]
    config = TrainConfig(
        recipe="hrgan-dtcr", out_dir=folder, settings=arm_settings(arm, args), steps=args.steps, device=args.device,
        seed=seed, log_every=args.log_every, sample_every=0, checkpoint_every=args.checkpoint_every,
        resume=checkpoint_file(folder, done[-1]) if done else None,
    )  # fmt: skip
    control = TrainControl()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with (folder / "log.jsonl").open("a") as log:

        def write(event: str, **record: Any) -> None:
            log.write(json.dumps({"event": event, **record}) + "\n")
            log.flush()

        write("start", step=done[-1]["step"] if done else 0, settings=config.settings, device=args.device,
              threads=torch.get_num_threads(), load=os.getloadavg(), argv=sys.argv)  # fmt: skip
        for event in train(config, [cine], control):
            cpu = cpu_before + time.process_time() - cpu0
            wall = wall_before + time.perf_counter() - wall0
            if isinstance(event, Progress):
                write("progress", step=event.step, cpu_s=cpu, losses=event.losses)
                if cpu >= args.cpu_seconds:
                    control.request_stop()
            elif isinstance(event, CheckpointSaved):
                write("checkpoint", step=event.step, checkpoint=event.path.name, cpu_s=cpu, wall_s=wall,
                      load=os.getloadavg())  # fmt: skip
            elif isinstance(event, Finished):
                write("finished", step=event.step, reason=event.reason, cpu_s=cpu, wall_s=wall)
    return checkpoints(folder)[-1]


def dtcr_features(settings, discriminator: torch.nn.Module, device: torch.device) -> FeatureFn:
    """The DTCR feature network of these recipe settings, also for a run trained without DTCR."""
    if settings.dtcr_features == "discriminator":
        return discriminator.frame_features
    return vgg_features(load_vgg(int(settings.dtcr_features[3:]), settings.vgg_weights or None).to(device))


def gradient_norm(loss: torch.Tensor, parameters: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)))


def training_signals(path: Path, real: torch.Tensor, device: str) -> dict[str, float]:
    """What drives the generator of a checkpoint, given the real clips ``(N, 1, T, R, R)`` in [-1, 1].

    - ``d_logit_gap``: the discriminator's mean logit on real clips minus that on generated ones (0: it
      cannot tell them apart, so its gradient carries little about the data);
    - ``dtcr_grad_share``: the norm of the generator's gradient from lambda * DTCR over that from the
      adversarial loss, on `SIGNAL_SEQUENCES` generated sequences, lambda being the linear schedule's
      at the checkpoint's step (for a run without DTCR: what the term would add).
    """
    checkpoint = load_checkpoint(path)
    recipe = load_recipe(checkpoint, device)
    settings = recipe.settings
    generator, discriminator = recipe.models["generator"], recipe.models["discriminator"]
    stage, alpha = recipe.schedule(checkpoint.step)
    torch.manual_seed(SAMPLE_SEED)  # the DTCR patches' places
    n = SIGNAL_SEQUENCES
    fake = generator(*recipe.latents(n, settings.frames), recipe.modality_tensor(n), stage, alpha)
    fake_logits, _ = discriminator(fake, stage, alpha)
    adversarial = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    weight = linear_weight(
        checkpoint.step, settings.dtcr_weight_start, settings.dtcr_weight_end, settings.dtcr_ramp_steps
    )
    features = dtcr_features(settings, discriminator, recipe.device)
    dtcr = weight * dtcr_loss(fake, features, DTCR_PATCH)
    parameters = list(generator.parameters())
    with torch.no_grad():
        real_logits, _ = discriminator(
            real_at_stage(real.to(recipe.device), generator.resolutions[stage], alpha), stage, alpha
        )
    return {
        "d_logit_gap": float(real_logits.mean() - fake_logits.detach().mean()),
        "dtcr_grad_share": gradient_norm(dtcr, parameters) / gradient_norm(adversarial, parameters),
    }


def evaluate_run(
    folder: Path, real: np.ndarray, normalised: torch.Tensor, data_range: float, floor: dict[str, float], args
) -> list[dict[str, Any]]:
    """Every checkpoint record of a run with its metrics; metrics are cached in ``folder/evaluation.json``.

    `real` are the cine's clips ``(N, T, S, S)`` in data units, `normalised` the same as the
    discriminator sees them, ``(N, 1, T, S, S)`` in [-1, 1].
    """
    cache_path = folder / "evaluation.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    rows = []
    for record in checkpoints(folder):
        key = f"{Path(record['checkpoint']).name} n={args.sequences}"
        path = checkpoint_file(folder, record)
        if key not in cache:
            fake = generate_sequences(path, args.sequences, seed=SAMPLE_SEED, device=args.device).array
            metrics = sequence_metrics(real, fake.transpose(1, 0, 2, 3), data_range)  # (T, N, ...) -> (N, T, ...)
            cache[key] = {**metrics, **hyperscore_inputs(metrics, floor)}
        if "dtcr_grad_share" not in cache[key]:
            cache[key].update(training_signals(path, normalised, args.device))
            partial = cache_path.with_suffix(".tmp")
            partial.write_text(json.dumps(cache, indent=1))
            partial.replace(cache_path)
        rows.append({**record, **cache[key]})
    return rows


def seed_mean(runs: Runs, arm: str, step: int, key: str) -> float:
    values = [row[key] for (a, _), rows in runs.items() if a == arm for row in rows if row["step"] == step]
    return float(np.mean(values))


def common_steps(runs: Runs) -> list[int]:
    """Steps that every run has a checkpoint of."""
    return sorted(set.intersection(*({row["step"] for row in rows} for rows in runs.values())))


def grown(step: int, settings: dict[str, Any]) -> bool:
    """Whether the generator of these recipe settings has faded in its last stage by `step`."""
    n_stages = (settings["resolution"] // settings["base_resolution"]).bit_length()
    return growth_schedule(step, n_stages, settings["stage_steps"], settings["fade_steps"]) == (n_stages - 1, 1.0)


def report(runs: Runs, floor: dict[str, float], settings: dict[str, Any]) -> None:
    """Markdown: every checkpoint of every run, then the on/off ratios at equal steps and the verdict.

    `settings` are the runs' recipe settings (the growth schedule decides which checkpoints the verdict uses).
    """
    first = next(iter(runs.values()))[0]
    real_warp, real_diff = first["warp_error_real"], first["mean_abs_diff_real"]
    print(
        f"\nReal cine: warping error {real_warp:.4f}, mean frame difference {real_diff:.4f} (data-range units). "
        f"Real vs real (the first half of the clips against the second): SWD {floor['swd']:.1f}, "
        f"frame-diff W1 {floor['diff_wasserstein']:.4f}, flow W1 {floor['flow_wasserstein']:.4f}.\n"
    )
    print(
        "| step | arm | seed | CPU s | warping error / real | frame diff / real | frame-diff W1 | flow W1 | SWD "
        "| s_swd | s_diff | s_flow | V | D logit gap | DTCR grad share |\n" + "|---" * 15 + "|"
    )
    rows = [(row, arm, seed) for (arm, seed), arm_rows in runs.items() for row in arm_rows]
    for row, arm, seed in sorted(rows, key=lambda r: (r[0]["step"], r[1], r[2])):
        print(
            f"| {row['step']} | {arm} | {seed} | {row['cpu_s']:.0f} | {row['warp_error_fake'] / real_warp:.2f} "
            f"| {row['mean_abs_diff_fake'] / real_diff:.2f} | {row['diff_wasserstein']:.4f} "
            f"| {row['flow_wasserstein']:.4f} | {row['swd']:.1f} | {row['s_swd']:.3f} "
            f"| {row['s_diff_wasserstein']:.3f} | {row['s_flow_wasserstein']:.3f} | {row['V']:.3f} "
            f"| {row['d_logit_gap']:.3f} | {row['dtcr_grad_share']:.1e} |"
        )
    if {arm for arm, _ in runs} != set(ARMS):
        return
    seeds = sorted({seed for _, seed in runs})
    print(f"\nDTCR on / off at equal steps, means over seeds {', '.join(map(str, seeds))}:\n")
    print(
        "| step | off frame diff / real | on frame diff / real | "
        + " | ".join(f"{name} on/off" for name in RATIO_KEYS.values())
        + " |\n|---|---|---|"
        + "---|" * len(RATIO_KEYS)
    )
    flickering = []
    for step in common_steps(runs):
        off_level = seed_mean(runs, "off", step, "mean_abs_diff_fake") / real_diff
        on_level = seed_mean(runs, "on", step, "mean_abs_diff_fake") / real_diff
        ratios = {key: seed_mean(runs, "on", step, key) / seed_mean(runs, "off", step, key) for key in RATIO_KEYS}
        print(f"| {step} | {off_level:.2f} | {on_level:.2f} | " + " | ".join(f"{r:.2f}" for r in ratios.values()), "|")
        # Before the last stage has grown in, the sequences are mostly the fresh networks' noise.
        if off_level >= FLICKER_LEVEL and grown(step, settings):
            flickering.append(ratios)
    print("\n" + verdict(flickering))


def verdict(flickering: list[dict[str, float]]) -> str:
    """The claim judged on the grown checkpoints where the no-DTCR model moves at least as much as the real cine."""
    if not flickering:
        return (
            "Verdict: not testable at this budget: once grown, the no-DTCR model's mean frame difference never "
            f"reached {FLICKER_LEVEL:.0%} of the real cine's, so there was no flicker for DTCR to remove."
        )
    warp = float(np.mean([r["warp_error_fake"] for r in flickering]))
    swd_ratio = float(np.mean([r["swd"] for r in flickering]))
    met = warp <= CLAIM_RATIO and swd_ratio <= SWD_TOLERANCE
    return (
        f"Verdict over the {len(flickering)} grown checkpoint(s) where the no-DTCR model moves like the real cine: "
        f"warping error on/off {warp:.2f}, SWD on/off {swd_ratio:.2f}. The claim (warping error at most "
        f"{CLAIM_RATIO:.2f} of no DTCR's, SWD at most {SWD_TOLERANCE:.2f}) is {'CONFIRMED' if met else 'REFUTED'}."
    )


def evaluate(args: argparse.Namespace, cine) -> None:
    folders = {(arm, seed): run_dir(args.workdir, arm, seed) for seed in args.seeds for arm in args.arms}
    missing = [str(folder) for folder in folders.values() if not checkpoints(folder)]
    if missing:
        raise SystemExit(
            f"no checkpoints logged in {', '.join(missing)}; train those runs first (drop --evaluate-only)"
        )
    any_folder = next(iter(folders.values()))
    reference = checkpoint_file(any_folder, checkpoints(any_folder)[0])
    trained = load_checkpoint(reference)
    real = real_clips(cine, reference, trained.settings["resolution"])
    normalised = torch.from_numpy(trained.normalization.apply(real)[:, None])
    data_range = trained.normalization.high - trained.normalization.low
    half = len(real) // 2
    floor = sequence_metrics(real[:half], real[half:], data_range)
    runs = {key: evaluate_run(folder, real, normalised, data_range, floor, args) for key, folder in folders.items()}
    report(runs, floor, trained.settings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--workdir", type=Path, required=True, help="folder of the runs, one sub-folder per arm and seed")
    add("--arms", default="on,off", help="comma-separated arms: on (DTCR), off (no DTCR)")
    add("--seeds", default="0,1", help="comma-separated training seeds")
    add("--resolution", type=int, default=64, help="training side length")
    add("--steps", type=int, default=None, help="step budget per run")
    add("--cpu-seconds", type=float, default=float("inf"), help="process CPU budget per run")
    add("--checkpoint-every", type=int, default=250, help="steps between evaluated checkpoints")
    add("--log-every", type=int, default=25, help="steps between loss records in log.jsonl")
    add("--stage-steps", type=int, default=250, help="hrgan stage_steps and fade_steps")
    add("--ramp-steps", type=int, default=2000, help="steps of the DTCR lambda ramp")
    add("--dtcr-weights", default="0.1,0.5", help="DTCR lambda at the start and the end of the ramp (the paper's)")
    add("--features", default="discriminator", choices=("discriminator", "vgg16", "vgg19"),
        help="DTCR features (vgg16 and vgg19 need the weight file, see docs/hrgan-dtcr.md)")  # fmt: skip
    add("--device", default="cpu", help="training and generation device: cpu, cuda, auto, ...")
    add("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    add("--sequences", type=int, default=32, help="sequences generated per checkpoint")
    add("--train-only", action="store_true", help="train the runs and stop")
    add("--evaluate-only", action="store_true", help="evaluate the checkpoints already in --workdir")
    args = parser.parse_args(argv)
    args.arms = args.arms.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.dtcr_weights = [float(w) for w in args.dtcr_weights.split(",")]
    if len(args.dtcr_weights) != 2:
        parser.error(f"--dtcr-weights {','.join(map(str, args.dtcr_weights))}: give START,END, e.g. 0.1,0.5")
    if not set(args.arms) <= set(ARMS):
        parser.error(f"--arms {','.join(args.arms)}: choose among {', '.join(ARMS)}")
    if args.sequences < 2:
        parser.error(f"--sequences {args.sequences}: give at least 2")
    if not args.evaluate_only and args.steps is None and args.cpu_seconds == float("inf"):
        parser.error("give a training budget: --steps N and/or --cpu-seconds S (or --evaluate-only)")
    if args.steps is None:
        args.steps = 10**7  # the CPU budget ends the run
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}; torch threads {torch.get_num_threads()}; cores {os.cpu_count()}")
    cine = load_sample("us_cine")
    if not args.evaluate_only:
        for seed in args.seeds:
            for arm in args.arms:
                last = train_arm(arm, seed, args, cine)
                print(
                    f"{arm} seed {seed}: step {last['step']}, {last['cpu_s']:.0f} CPU s, {last['wall_s']:.0f} wall s",
                    flush=True,
                )
    if not args.train_only:
        evaluate(args, cine)
        print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
