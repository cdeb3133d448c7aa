"""Screenshots of the docks' workflows for the docs (docs/images/), made by driving the real widgets.

1. ``train.png``: the MNI152 template, the Train dock after a dcgan run (its loss curves),
   its preview beside the template on the current slice.
2. ``metrics.png``: the Metrics dock comparing the template's axial slices (233 x 197) with the 64 x 64
   samples: PSNR cannot pair them and says so in its row, SWD and SF compare them after resampling.
3. ``generate.png``: the real ultrasound cine and two synthetic sequences of a (briefly trained)
   hrgan-dtcr model beside it, on one time slider.
4. ``samples.png``: every sample dataset opened together, side by side.
5. ``lesions.png``: the CT slice with two SinGAN lesions clicked in: the fused result under the danger zone
   (red: forbidden) and the location prior's heatmap and candidates, the clicked Points layer still active.

Run under a virtual display (minutes: it trains for real)::

    xvfb-run -a -s "-screen 0 1600x1100x24" .venv/bin/python scripts/screenshots.py [--out docs/images] [--steps 1500] \
        [--only lesions ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WINDOW = (1600, 1050)
SHOTS = ("train", "generate", "samples", "lesions")
WAIT_S = 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--steps", type=int, default=1500, help="dcgan training steps for the Train screenshot")
    parser.add_argument("--hrgan-steps", type=int, default=60, help="hrgan-dtcr steps for the Generate screenshot")
    parser.add_argument("--only", nargs="+", choices=SHOTS, default=SHOTS, help="the screenshots to make")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="medsynth-screenshots-"))
    if "train" in args.only:  # train.png and metrics.png: Metrics measures what Train generated
        train_and_measure(args.out, runs, args.steps)
    if "generate" in args.only:
        generate_sequences(args.out, runs, args.hrgan_steps)
    if "samples" in args.only:
        samples(args.out)
    if "lesions" in args.only:
        lesions(args.out, runs)


def viewer_with(*samples: str):
    import napari

    viewer = napari.Viewer(title="napari-medsynth")
    viewer.window._qt_window.resize(*WINDOW)
    for name in samples:
        viewer.open_sample("napari-medsynth", name)
    return viewer


def wait_until(condition: Callable[[], bool], what: str, poll_ms: int = 200) -> None:
    """Run the event loop until `condition()` holds; TimeoutError after `WAIT_S`.

    A slow poll, not a busy loop: PySide6 6.12 loses a reference to None per call that returns
    nothing, and some 100,000 calls abort Python (tests/conftest.py).
    """
    from qtpy.QtCore import QEventLoop, QTimer

    loop, poll = QEventLoop(), QTimer()
    poll.timeout.connect(lambda: condition() and loop.quit())
    poll.start(poll_ms)
    QTimer.singleShot(WAIT_S * 1000, loop.quit)
    loop.exec()
    poll.stop()
    if not condition():
        raise TimeoutError(f"gave up waiting for {what}")


def shoot(viewer, path: Path) -> None:
    """The whole window as a PNG of 256 colours: legible at full size, and a third of the bytes."""
    from PIL import Image

    start = time.monotonic()
    wait_until(lambda: time.monotonic() - start > 1.0, "the window to settle")
    viewer.screenshot(str(path), canvas_only=False)
    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
    print(f"wrote {path}")


def train_and_measure(out: Path, runs: Path, steps: int) -> None:
    """Train dcgan on the template from the Train dock, generate 16 samples, then measure them in the Metrics dock."""
    from napari_medsynth.workers import RunState

    viewer = viewer_with("mni152")
    _, train = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
    wait_until(lambda: train.ready, "the Train dock's recipes")
    train.data["layers"].value = [viewer.layers["mni152"]]
    train.device.value = "cpu"
    train.out_dir.value = runs / "dcgan"
    for name, value in {"steps": steps, "log_every": 10, "sample_every": 100, "checkpoint_every": steps}.items():
        train.option(name).value = value
    train.start()
    wait_until(lambda: train.run.state is RunState.IDLE and train.checkpoint_path is not None, "dcgan training")
    train.num_samples.value = 16
    train.generate()
    wait_until(lambda: len(viewer.layers) == 3, "generated samples")
    generated = viewer.layers[-1]
    generated.visible = False  # the preview, beside the template, shows what training made
    viewer.layers.selection = {viewer.layers["mni152"]}
    shoot(viewer, out / "train.png")

    generated.visible = True
    viewer.layers[1].visible = False  # the preview: the measured samples are the generated ones
    viewer.window.remove_dock_widget(train)
    _, metrics = viewer.window.add_plugin_dock_widget("napari-medsynth", "Metrics")
    metrics.real.select(viewer.layers["mni152"])
    metrics.fake.select(generated)
    metrics.slices.setChecked(True)  # the template's axial slices are the real items
    for name, box in metrics.metric_boxes.items():
        box.setChecked(name in ("psnr", "swd", "sf"))
    metrics.start()
    wait_until(lambda: metrics.run.worker is None, "the metrics")
    shoot(viewer, out / "metrics.png")
    viewer.close()


def generate_sequences(out: Path, runs: Path, steps: int) -> None:
    """A short hrgan-dtcr run on part of the cine, then two sequences from the Generate dock beside the cine."""
    import medsynth.training.recipes.hrgan_dtcr  # noqa: F401 - registers the recipe
    from medsynth.training.config import TrainConfig
    from medsynth.training.trainer import train
    from napari_medsynth.layers import from_layer

    viewer = viewer_with("us_cine")
    cine = viewer.layers["us_cine"]
    image = from_layer(*cine.as_layer_data_tuple()[:2])
    settings = {"resolution": 64, "base_resolution": 32, "frames": 8, "batch_size": 4, "dtcr_features": "discriminator"}
    config = TrainConfig(recipe="hrgan-dtcr", out_dir=runs / "hrgan", steps=steps, device="cpu", sample_every=0,
                         checkpoint_every=steps, settings=settings)  # fmt: skip
    *_, finished = train(config, [image])
    _, generate = viewer.window.add_plugin_dock_widget("napari-medsynth", "Generate")
    generate.device = "cpu"
    generate.checkpoint_file.value = finished.checkpoint
    generate.options.set_values({"frames": 30, "count": 2, "seed": 1})
    generate.generate()
    wait_until(lambda: generate.layer is not None, "generated sequences")
    viewer.dims.set_point(1, 12 * cine.scale[0])  # frame 12 of the cine and of both sequences
    shoot(viewer, out / "generate.png")
    viewer.close()


def samples(out: Path) -> None:
    """Every sample opened into one viewer: side by side, none hidden under the 2 m wide radiograph."""
    from medsynth.data.samples import SAMPLES

    viewer = viewer_with(*sorted(SAMPLES))
    shoot(viewer, out / "samples.png")
    viewer.close()


def lesions(out: Path, runs: Path) -> None:
    """A SinGAN trained on a nodule-sized crop of the CT slice, loaded into the Lesions dock; two lesions clicked in."""
    import numpy as np

    from medsynth.data.samples import load_sample
    from medsynth.lesions.crop import lesion_crop
    from medsynth.lesions.singan_training import SinGANSettings, save_singan, train_to_end

    values, mask = lesion_crop(load_sample("ct_slice").array, (44, 44, 64, 64))
    settings = SinGANSettings(min_size=16, iterations=100, width=16, layers=4)
    model = save_singan(train_to_end(values, mask, settings), runs / "lesion.safetensors")
    viewer = viewer_with("ct_slice")
    background = viewer.layers["ct_slice"]
    earlier = np.zeros(background.data.shape, dtype=np.uint8)
    earlier[95:105, 55:65], earlier[60:70, 85:95] = 1, 2
    viewer.add_labels(earlier, name="earlier lesions", scale=background.scale, translate=background.translate, visible=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Lesions")
    widget.background.layer.value = background
    widget.model.load(model)
    widget.danger.rules_button.native.click()
    widget.prior.label_layers.value = [viewer.layers["earlier lesions"]]
    widget.prior.show_button.native.click()
    points = viewer.add_points(name="clicks", ndim=2, size=3, face_color="yellow")
    points.mode = "add"
    widget.placement.hand_layer.value = points
    for yx in [(99, 60), (82, 105)]:
        points.add(background.data_to_world(np.asarray(yx, dtype=float)))
    viewer.reset_view()
    shoot(viewer, out / "lesions.png")
    viewer.close()


if __name__ == "__main__":
    main()
