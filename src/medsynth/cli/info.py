"""`medsynth info`: versions, compute devices and where pretrained weights were found."""

from __future__ import annotations

import platform

from medsynth.versions import package_version

PACKAGES = ("napari-medsynth", "torch", "numpy", "nibabel", "pydicom", "highdicom", "torchmetrics", "napari")


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print versions, devices and pretrained weights found")
    parser.set_defaults(func=run)


def run(args) -> int:
    print(f"python        {platform.python_version()} ({platform.machine()})")
    for name in PACKAGES:
        print(f"{name:<13} {package_version(name)}")
    print("devices       " + ", ".join(devices()))
    from medsynth.weights import weights_report

    for name, path in weights_report():
        print(f"weights       {name:<14} {path if path else 'not found'}")
    return 0


def devices() -> list[str]:
    """Compute devices torch can use here, best first."""
    import torch

    found = [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found + [f"cpu ({torch.get_num_threads()} threads)"]
