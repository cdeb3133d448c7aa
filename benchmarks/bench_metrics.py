"""Throughput of SSIM and SWD on 256x256 images versus reference implementations, FID/KID cost, and memory.

    python benchmarks/bench_metrics.py [--images 1000] [--ref-images 250] [--fid-images 8] [--fid-features 2048]
    python benchmarks/bench_metrics.py --memory BASELINE_SRC [--volume-mb 250 1000] [--modes volume slices]
    python benchmarks/bench_metrics.py --memory --no-baseline [--volume-mb 250 1000] [--modes volume slices]

Memory (``--memory``): peak resident memory of ``medsynth evaluate --real R.nii --fake F.nii`` (PSNR,
SSIM, SWD; each volume one item, then ``--slices``) on MNI152 volumes upsampled (nearest) to about
``--volume-mb`` MB of float32 each, fake = real + noise, run from this tree and from the package in
BASELINE_SRC (``git archive main src | tar -x -C /tmp/base``, then ``/tmp/base/src``) in the same run;
a command that passes ``--cap-gb`` is killed and reported as above it (`rss.py`). ``--no-baseline``
measures this tree only (when the baseline's figures are known from an earlier run, and running it
again would take the machine's memory up to the cap).

Data: axial slices of the MNI152 T1 template resized to 256x256, randomly shifted, as the "real"
set; the "fake" set is the same slices blurred and with noise. Both sets are the same for every
implementation in this run.

- SSIM: `medsynth.metrics.fidelity.ssim` (float64; numpy and scipy on the CPU) on all `--images` pairs, against a
  loop of scikit-image's ``structural_similarity`` (the reference whose figures it reproduces) over
  the first `--ref-images` pairs; agreement is checked on those.
- SWD: `medsynth.metrics.swd` against a straightforward numpy port of the progressive-GAN code (full
  5x5 convolutions, zero-insertion expansion, per-column sorts), both on `--ref-images` per set,
  then ours on `--images` per set.
- FID/KID: the cost with a random-weight Inception (the published weights are not needed to time
  them; figures are meaningless as distances), and FID's final step alone on `--fid-features`
  dimensional covariances: `medsynth.metrics.distribution.frechet_distance` (symmetric
  eigendecompositions) against torchmetrics' `_compute_fid` (eigenvalues of the non-symmetric product)
  and scipy's `sqrtm`, on the same matrices.

Images/s counts the images of both sets that a distribution metric consumes (2 x per set) and the
pairs for SSIM.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.transform import resize

from medsynth.data.samples import sample_path
from medsynth.metrics.fidelity import ssim
from medsynth.metrics.swd import swd

SIZE = 256


def make_sets(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 256, 256) real and fake float32 sets built from MNI152 axial slices (values 0..~250)."""
    volume = np.asarray(nib.load(sample_path("mni152")).dataobj, dtype=np.float32)
    base = resize(volume[:, :, 30:170].transpose(2, 0, 1), (140, SIZE, SIZE), preserve_range=True).astype(np.float32)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), n)
    shifts = rng.integers(-8, 9, (n, 2))
    real = np.stack([np.roll(base[p], tuple(s), axis=(0, 1)) for p, s in zip(picks, shifts)])
    fake = ndimage.gaussian_filter(real, (0, 1.0, 1.0)) + rng.normal(0, 4.0, real.shape).astype(np.float32)
    return real, fake


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# A straightforward numpy SWD, written as the progressive-GAN reference code is: the baseline. ---------

_K = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256.0


def _ref_down(x):
    return ndimage.convolve(x, _K[None, None], mode="mirror")[:, :, ::2, ::2]


def _ref_up(x):
    up = np.zeros((x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3]), x.dtype)
    up[:, :, ::2, ::2] = x
    return ndimage.convolve(up, 4 * _K[None, None], mode="mirror")


def _ref_descriptors(images, levels, per_image, rng):
    pyramid = [images[:, None].astype(np.float32)]
    for _ in range(1, levels):
        pyramid.append(_ref_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - _ref_up(pyramid[-1])
    out = []
    for level in pyramid:
        n, c, h, w = level.shape
        count = n * per_image
        nh, ch, dy, dx = np.ogrid[0:count, 0:c, -3:4, -3:4]
        img = nh // per_image
        x = dx + rng.integers(3, w - 3, size=(count, 1, 1, 1))
        y = dy + rng.integers(3, h - 3, size=(count, 1, 1, 1))
        desc = level.flat[((img * c + ch) * h + y) * w + x]
        desc = desc - desc.mean(axis=(0, 2, 3), keepdims=True)
        desc = desc / desc.std(axis=(0, 2, 3), keepdims=True)
        out.append(desc.reshape(count, -1))
    return out


def reference_swd(real, fake, seed=0):
    rng = np.random.default_rng(seed)
    levels = int(np.log2(real.shape[-1] // 16)) + 1
    dr = _ref_descriptors(real, levels, 128, rng)
    df = _ref_descriptors(fake, levels, 128, rng)
    dists = []
    for a, b in zip(dr, df):
        per_repeat = []
        for _ in range(4):
            dirs = rng.standard_normal((a.shape[1], 128))
            dirs = (dirs / np.sqrt((dirs**2).sum(axis=0, keepdims=True))).astype(np.float32)
            pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
            per_repeat.append(np.mean(np.abs(pa - pb)))
        dists.append(1e3 * np.mean(per_repeat))
    return dists + [float(np.mean(dists))]


# -----------------------------------------------------------------------------------------------


def bench_ssim(real, fake, n_ref):
    span = float(real.max() - real.min())
    ssim(real[:2], fake[:2], data_range=span)  # one-time start-up (first calls) is not throughput
    ours, t_ours = timed(ssim, real, fake, data_range=span)

    def skimage_loop():
        return np.array(
            [
                structural_similarity(
                    r, f, data_range=span, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
                )
                for r, f in zip(real[:n_ref].astype(np.float64), fake[:n_ref].astype(np.float64))
            ]
        )

    ref, t_ref = timed(skimage_loop)
    ours_rate, ref_rate = len(real) / t_ours, n_ref / t_ref
    print(f"SSIM  medsynth    {len(real):5d} pairs  {t_ours:7.2f} s  {ours_rate:8.1f} pairs/s")
    print(f"SSIM  scikit-image {n_ref:4d} pairs  {t_ref:7.2f} s  {ref_rate:8.1f} pairs/s")
    print(
        f"SSIM  speed ratio {ours_rate / ref_rate:.2f}x; max |difference| on the common pairs "
        f"{np.abs(ours[:n_ref] - ref).max():.2e}"
    )


def bench_swd(real, fake, n_ref):
    ours_small, t_small = timed(swd, real[:n_ref], fake[:n_ref])
    ref_small, t_ref = timed(reference_swd, real[:n_ref], fake[:n_ref])
    ours_all, t_all = timed(swd, real, fake)
    rate_small, rate_ref, rate_all = 2 * n_ref / t_small, 2 * n_ref / t_ref, 2 * len(real) / t_all
    print(
        f"SWD   medsynth    {n_ref:4d}+{n_ref:<4d} {t_small:7.2f} s  {rate_small:8.1f} images/s  mean {ours_small['mean']:.2f}"
    )
    print(
        f"SWD   numpy ref   {n_ref:4d}+{n_ref:<4d} {t_ref:7.2f} s  {rate_ref:8.1f} images/s  mean {ref_small[-1]:.2f}"
    )
    print(
        f"SWD   medsynth    {len(real):4d}+{len(real):<4d} {t_all:7.2f} s  {rate_all:8.1f} images/s  mean {ours_all['mean']:.2f}"
    )
    print(
        f"SWD   speed ratio at {n_ref} per set {rate_small / rate_ref:.2f}x; per level ours "
        f"{[round(v, 2) for k, v in ours_small.items() if k != 'mean']} reference {[round(float(v), 2) for v in ref_small[:-1]]}"
    )


def bench_fid_kid(real, fake, n):
    from medsynth.metrics.distribution import fid, kid
    from medsynth.models.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    span = (float(real.min()), float(real.max()))
    _, t_fid = timed(fid, real[:n], fake[:n], data_range=span, extractor=net, batch_size=16)
    _, t_kid = timed(kid, real[:n], fake[:n], data_range=span, extractor=net, batch_size=16, subsets=10)
    print(f"FID   random-weight Inception {n}+{n} images  {t_fid:7.2f} s  {2 * n / t_fid:6.1f} images/s")
    print(f"KID   random-weight Inception {n}+{n} images  {t_kid:7.2f} s  {2 * n / t_kid:6.1f} images/s")
    print("      (published Inception weights are absent here: timings only, the distances mean nothing)")


def bench_frechet(features: int, samples: int = 3000, seed: int = 0):
    """FID's final step on covariances of `features` dimensions: ours against torchmetrics and scipy."""
    from scipy import linalg
    from torchmetrics.image.fid import _compute_fid

    from medsynth.metrics.distribution import frechet_distance

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((samples, features))
    b = rng.standard_normal((samples, features)) * 1.1 + 0.1
    stats = [torch.from_numpy(v) for v in (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))]
    ours, t_ours = timed(frechet_distance, *stats)
    tm, t_tm = timed(_compute_fid, *stats)
    root, t_sp = timed(linalg.sqrtm, stats[1].numpy() @ stats[3].numpy())
    sp = float(((stats[0] - stats[2]) ** 2).sum() + stats[1].trace() + stats[3].trace()) - 2 * np.trace(root).real
    print(f"FID final step, {features} features: medsynth {t_ours:7.2f} s  torchmetrics {t_tm:7.2f} s  scipy sqrtm {t_sp:7.2f} s")
    print(
        f"FID final step speed ratio {t_tm / t_ours:.2f}x vs torchmetrics, {t_sp / t_ours:.2f}x vs scipy; values "
        f"{float(ours):.6f} / {float(tm):.6f} / {sp:.6f}"
    )


def write_volume_pair(folder: Path, megabytes: float) -> tuple[Path, Path, tuple[int, ...]]:
    """Real and fake ``.nii`` volumes of about `megabytes` MB of float32 each, written slab by slab."""
    from medsynth.io import read_image
    from medsynth.io.stream import nifti_stream

    mni = read_image(sample_path("mni152"))
    source = np.asarray(mni.array, dtype=np.float32)
    factor = max(1, round((megabytes * 1e6 / 4 / source.size) ** (1 / 3)))
    shape = tuple(n * factor for n in source.shape)
    like = mni.with_array(source[:1], spacing=tuple(s / factor for s in mni.spacing))
    rng = np.random.default_rng(0)
    paths = folder / "real.nii", folder / "fake.nii"
    with nifti_stream(paths[0], like, shape) as real, nifti_stream(paths[1], like, shape) as fake:
        for z, plane in enumerate(source):
            slab = np.repeat(np.repeat(np.repeat(plane[None], factor, 0), factor, 1), factor, 2)
            real.write((z * factor,), slab)
            fake.write((z * factor,), slab + rng.normal(0, 8.0, slab.shape).astype(np.float32))
    return *paths, shape


def bench_memory(baseline_src: Path | None, sizes: list[float], cap_gb: float, modes: list[str]) -> None:
    from rss import run_medsynth

    for megabytes in sizes:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            real, fake, shape = write_volume_pair(Path(tmp), megabytes)
            size = real.stat().st_size
            load = os.getloadavg()[0]
            print(f"\nevaluate on two float32 volumes {shape}, {size / 2**30:.2f} GiB each (load {load:.1f})")
            for mode in ([] if m == "volume" else ["--slices"] for m in modes):
                argv = ["evaluate", "--real", str(real), "--fake", str(fake), *mode]
                trees = [("main", baseline_src)] if baseline_src is not None else []
                for label, src in [*trees, ("this tree", None)]:
                    m = run_medsynth(argv, src, int(cap_gb * 2**30))
                    ratio = m.peak_rss / size
                    print(f"  {' '.join(['evaluate', *mode]):<20} {label:<10} {m.describe()}, {ratio:.2f}x one input")
                    if m.exit_code not in (0, -9):
                        print("    " + m.stderr_tail.strip().replace("\n", "\n    "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--ref-images", type=int, default=250)
    parser.add_argument("--fid-images", type=int, default=8)
    parser.add_argument("--fid-features", type=int, default=2048)
    parser.add_argument("--memory", nargs="?", const="", metavar="BASELINE_SRC",
                        help="measure evaluate's memory instead, against the package in BASELINE_SRC")  # fmt: skip
    parser.add_argument("--volume-mb", type=float, nargs="+", default=[250, 1000])
    parser.add_argument("--cap-gb", type=float, default=8.0)
    parser.add_argument("--modes", nargs="+", choices=("volume", "slices"), default=["volume", "slices"])
    parser.add_argument("--no-baseline", action="store_true", help="with --memory: measure this tree only")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"load average at the start: {os.getloadavg()}")
    if args.memory is not None:
        if not args.memory and not args.no_baseline:
            parser.error("--memory needs BASELINE_SRC, or --no-baseline to measure this tree only")
        baseline = None if args.no_baseline else Path(args.memory)
        bench_memory(baseline, args.volume_mb, args.cap_gb, args.modes)
        print(f"load average at the end: {os.getloadavg()}")
        return
    real, fake = make_sets(args.images)
    print(f"data: {len(real)} real and {len(fake)} fake images of {SIZE}x{SIZE} (MNI152 slices)")
    bench_ssim(real, fake, min(args.ref_images, args.images))
    bench_swd(real, fake, min(args.ref_images, args.images))
    bench_fid_kid(real, fake, args.fid_images)
    bench_frechet(args.fid_features)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
