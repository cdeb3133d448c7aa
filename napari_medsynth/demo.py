"""The main job on the embedded sample data (`scripts/demo.sh`).

It opens real 4D and cine data through the plugin's reader, docks the plugin's widgets, trains a
baseline GAN on MNI152 axial slices with the core trainer, generates samples into a layer, writes them
as NIfTI and as synthetic DICOM, measures them against the real slices, and saves a screenshot of the
viewer with the samples beside the template. With ``--interactive`` it stops after loading and leaves the viewer open for the user.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("napari_medsynth.demo")

WIDGETS = ("Train", "Metrics", "Reader study")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for outputs")
    parser.add_argument("--steps", type=int, default=200, help="training steps of the baseline GAN")
    parser.add_argument("--interactive", action="store_true", help="leave the viewer open (needs a display)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import napari

    viewer = napari.Viewer(show=args.interactive, title="napari-medsynth demo")
    viewer.window._qt_window.resize(1600, 1000)
    load_data(viewer)
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget("napari-medsynth", name, tabify=True)
    if args.interactive:
        napari.run()
        return 0
    summary = run_workflow(viewer, args.out, args.steps)
    print(json.dumps(summary, indent=2))
    viewer.close()
    return 0


def load_data(viewer) -> None:
    """A real 4D NIfTI (time slider), the ultrasound cine and the MNI152 template, via the plugin."""
    from nibabel.testing import data_path

    from medsynth.data.samples import sample_path

    viewer.open(str(Path(data_path) / "example4d.nii.gz"), plugin="napari-medsynth")
    viewer.open(str(sample_path("us_cine")), plugin="napari-medsynth")
    viewer.open_sample("napari-medsynth", "mni152")
    for layer in viewer.layers[:-1]:
        layer.visible = False


def run_workflow(viewer, out: Path, steps: int) -> dict:
    """Train, generate, write, measure and screenshot; return a summary of what was written."""
    from medsynth.io import write_dicom, write_nifti
    from medsynth.metrics.evaluate import evaluate, to_json
    from medsynth.training.config import TrainConfig
    from medsynth.training.events import Finished, Progress
    from medsynth.training.generate import generate
    from medsynth.training.trainer import train
    from napari_medsynth.layers import from_layer, to_layer_data

    out.mkdir(parents=True, exist_ok=True)
    mni = viewer.layers["mni152"]
    source = from_layer(mni.data, mni.as_layer_data_tuple()[1])
    config = TrainConfig(recipe="dcgan", out_dir=out / "run", steps=steps, checkpoint_every=steps,
                         sample_every=0, log_every=max(1, steps // 10))
    checkpoint = None
    for event in train(config, [source]):
        if isinstance(event, Progress):
            log.info("step %d/%d  %s", event.step, event.total_steps,
                     "  ".join(f"{k}={v:.3f}" for k, v in event.losses.items()))
        elif isinstance(event, Finished):
            checkpoint = event.checkpoint

    samples = generate(checkpoint, n=16, seed=0)
    synthetic = _layer(to_layer_data(samples))
    nifti = write_nifti(samples, out / "samples.nii.gz")
    first = samples.with_array(samples.array[0], axes="yx", spacing=samples.spacing[1:],
                               origin=None, direction=None)
    dicom = write_dicom(first, out / "dicom")

    real = _axial_slices(source.array, samples.array.shape[1:])
    results = evaluate(real, samples.array, metrics=("swd",))
    to_json(results, out / "metrics.json")

    _show_result(viewer, mni, synthetic)
    screenshot = out / "screenshot.png"
    viewer.screenshot(str(screenshot), canvas_only=False)
    return {
        "checkpoint": str(checkpoint),
        "samples_nifti": str(nifti),
        "samples_dicom": [str(p) for p in dicom],
        "metrics": {r.name: r.mean for r in results},
        "screenshot": str(screenshot),
    }


def _layer(layer_tuple):
    from napari.layers import Layer

    return Layer.create(*layer_tuple)


def _axial_slices(volume: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The middle third of the axial slices, resized to the samples' size, as the real reference."""
    from skimage.transform import resize

    z = volume.shape[0]
    picked = np.asarray(volume[z // 3 : 2 * z // 3], dtype=np.float32)
    return np.stack([resize(s, shape, anti_aliasing=True, preserve_range=True) for s in picked])


def _show_result(viewer, template, synthetic, timeout_s: float = 120.0) -> None:
    """The generated samples beside the template on the current slice, in view, with the Train dock ready.

    The 4D image and the cine stay loaded but hidden: their time axes would share the template's
    sliders. The Train dock loads torch and its recipes in the background; the screenshot waits for it.
    """
    import time

    from qtpy.QtWidgets import QApplication

    from napari_medsynth.placement import place_beside, show_new

    for layer in viewer.layers:
        layer.visible = layer is template
    place_beside(viewer, synthetic, [template])
    viewer.add_layer(synthetic)
    viewer.layers.selection = {synthetic}
    show_new(viewer, synthetic)  # fits the visible layers: the hidden 4D image and cine lie elsewhere
    train = viewer.window.dock_widgets["Train (napari-medsynth)"]
    train.parent().raise_()  # the dock around the widget, in front of the other tabs
    deadline = time.monotonic() + timeout_s
    while not train.ready and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)


if __name__ == "__main__":
    raise SystemExit(main())
