"""Peak memory of ``medsynth generate --num N``: this tree (chunks streamed to the output) against a baseline.

    python benchmarks/bench_generate.py BASELINE_SRC [--num 20000 100000] [--formats .nii dicom] [--cap-gb 8]

A DCGAN (64x64, the recipe's default widths) is trained for one step on the MNI152 template; then
``medsynth generate CKPT --num N --out OUT`` runs from this tree and from the package in BASELINE_SRC
(``git archive main src | tar -x -C /tmp/base``, then ``/tmp/base/src``), one after the other in the
same run, for every N and output format (``.nii``, ``.nii.gz`` or ``dicom``, a folder). A command whose
resident memory passes ``--cap-gb`` is killed and reported as above it (`rss.py`). The output is
deleted after each command; set BENCH_TMP to put it on a disk with room (N x 16 KiB, twice for .nii.gz).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from rss import run_medsynth

from medsynth.data.samples import sample_path
from medsynth.io import read_image
from medsynth.training.config import TrainConfig
from medsynth.training.trainer import train


def checkpoint(folder: Path) -> Path:
    config = TrainConfig(recipe="dcgan", out_dir=folder / "run", steps=1, device="cpu", sample_every=0)
    return list(train(config, [read_image(sample_path("mni152"))]))[-1].checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline_src", type=Path)
    parser.add_argument("--num", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--formats", nargs="+", default=[".nii"])
    parser.add_argument("--cap-gb", type=float, default=8.0)
    args = parser.parse_args()
    print(f"load average at the start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        ckpt = checkpoint(Path(tmp))
        for num in args.num:
            for fmt in args.formats:
                out = Path(tmp) / ("out" if fmt == "dicom" else f"out{fmt}")
                size = num * 64 * 64 * 4
                print(f"\ngenerate --num {num} --out {out.name} ({size / 2**30:.2f} GiB of float32 images)")
                for label, src in (("main", args.baseline_src), ("this tree", None)):
                    m = run_medsynth(["generate", str(ckpt), "--num", str(num), "--out", str(out), "--device", "cpu"],
                                     src, int(args.cap_gb * 2**30))  # fmt: skip
                    print(f"  {label:<10} {m.describe()}, {m.peak_rss / size:.2f}x the images")
                    if m.exit_code != 0 and m.stderr_tail.strip():
                        print("    " + m.stderr_tail.strip().splitlines()[-1])
                    if out.is_dir():
                        shutil.rmtree(out)
                    else:
                        out.unlink(missing_ok=True)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
