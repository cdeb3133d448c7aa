"""The Lesions widget with a real viewer on the real CT sample slice: the annotator's whole workflow."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from qtpy.QtWidgets import QPushButton
from scipy import ndimage

from medsynth.data.samples import load_sample
from medsynth.io import MedImage, read_image, write_nifti
from medsynth.lesions.backgrounds import generate_backgrounds
from medsynth.lesions.crop import lesion_crop
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.learned import HeatmapModel, predict_danger
from medsynth.lesions.location import top_candidates
from medsynth.lesions.placement import allowed_centres, final_candidates
from medsynth.lesions.scene import placed_mask
from medsynth.lesions.session import LesionSession
from medsynth.lesions.singan_training import SinGANSettings, load_singan, save_singan, train_to_end
from medsynth.training.config import TrainConfig
from medsynth.training.trainer import train
from napari_medsynth.layers import SYNTHETIC_SUFFIX, layer_image, to_layer_data
from napari_medsynth.widgets.lesions import LesionWidget
from napari_medsynth.workers import RunState

pytestmark = pytest.mark.gui

# Two pyramid scales on a 20x20 crop, a few rounds each: seconds on a 2-core CPU, yet the lesion
# mask channel is learnt well enough that sampled lesions have footprints.
TINY = {"min_size": 17, "iterations": 30, "width": 8, "layers": 4, "d_steps": 1, "g_steps": 1}
CROP_BOX = (44, 44, 64, 64)
WAIT_MS = 60_000


@pytest.fixture
def notifications():
    """Messages of the napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    yield seen
    notification_manager.notification_ready.disconnect()


@pytest.fixture(scope="module")
def singan_file(tmp_path_factory) -> Path:
    """A tiny SinGAN trained on a lesion crop of the CT slice, saved as the widget's Save button does."""
    values, mask = lesion_crop(load_sample("ct_slice").array, CROP_BOX)
    generator = train_to_end(values, mask, SinGANSettings(**TINY))
    return save_singan(generator, tmp_path_factory.mktemp("model") / "lesion.safetensors")


@pytest.fixture(scope="module")
def learned_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A danger-unet (40 steps on the CT slice and its bootstrap mask) and a briefly trained lesion-heatmap."""
    ct = load_sample("ct_slice")
    history = np.zeros(ct.array.shape, dtype=np.uint8)
    history[88:98, 28:38] = 1
    history[60:70, 80:90] = 2
    small = {"width": 8, "depth": 2, "resolution": 64, "batch_size": 4, "lr": 3e-3}
    checkpoints = []
    for recipe, target, steps in [("danger-unet", bootstrap_danger(ct), 40), ("lesion-heatmap", history, 10)]:
        config = TrainConfig(recipe=recipe, out_dir=tmp_path_factory.mktemp(recipe), steps=steps, sample_every=0,
                             device="cpu", settings=small, normalization="window", window_center=40, window_width=400)  # fmt: skip
        checkpoints.append(list(train(config, [(ct, target)]))[-1].checkpoint)
    return checkpoints[0], checkpoints[1]


@pytest.fixture(scope="module")
def background_model(tmp_path_factory) -> Path:
    """A tiny vqgan-hdfb (autoencoder and token prior, a few steps) trained on the CT slice at 64 px."""
    settings = {"resolution": 64, "batch_size": 2, "base_channels": 8, "channel_mult": "1,1,2,2", "codebook_size": 16,
                "codebook_dim": 8, "perceptual": "discriminator", "disc_channels": 8, "autoencoder_steps": 2,
                "prior_steps": 1, "prior_dim": 16, "prior_layers": 1, "prior_heads": 2}  # fmt: skip
    config = TrainConfig(recipe="vqgan-hdfb", out_dir=tmp_path_factory.mktemp("vqgan"), sample_every=0, device="cpu",
                         settings=settings)  # fmt: skip
    return list(train(config, [load_sample("ct_slice")]))[-1].checkpoint


def open_widget(viewer) -> LesionWidget:
    """The widget as napari opens it: through the plugin manifest."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Lesions")
    assert isinstance(widget, LesionWidget)
    return widget


def open_with_crop(make_napari_viewer) -> tuple[object, object, LesionWidget]:
    """A viewer with the CT slice as background and `CROP_BOX` drawn on it, and the widget set to both."""
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(load_sample("ct_slice"))
    background = viewer.add_image(data, **kwargs)
    y0, x0, y1, x1 = CROP_BOX
    # The annotator draws the crop in the viewer, i.e. in world millimetres.
    corners = [world(background, p) for p in [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]]
    shapes = viewer.add_shapes([np.array(corners)], shape_type="rectangle", name="crop")
    widget = open_widget(viewer)
    widget.background.layer.value = background
    widget.model.crop_layer.value = shapes
    return viewer, background, widget


def world(layer, yx) -> list[float]:
    return list(layer.data_to_world(np.asarray(yx, dtype=float)))


def ids(layer) -> set[int]:
    return set(np.unique(layer.data).tolist()) - {0}


@pytest.mark.slow
def test_annotator_workflow(make_napari_viewer, qtbot, tmp_path, notifications, monkeypatch):
    viewer, background, widget = open_with_crop(make_napari_viewer)
    source = np.array(background.data)
    y0, x0, y1, x1 = CROP_BOX

    # Train a tiny SinGAN on the crop in a worker.
    widget.model.settings.set_values(TINY)
    widget.model.run_options.set_values({"log_every": 10})
    widget.model.train_button.native.click()
    assert widget.model.run.state is RunState.RUNNING and not widget.model.train_button.enabled
    qtbot.waitUntil(lambda: widget.model.generator is not None and widget.model.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert widget.model.generator.scales == 2 and widget.model.progress is None
    assert widget.model.status.value.startswith("trained SinGAN")
    crop, _ = widget.model.crop()
    np.testing.assert_array_equal(crop.array, source[y0:y1, x0:x1])
    saved = widget.model.save(tmp_path / "lesion.safetensors")
    assert load_singan(saved).scales == 2
    # The crop went to training as an image of the layer: the model knows it is CT in HU at the slice's spacing.
    ct = load_sample("ct_slice")
    assert load_singan(saved).data["units"] == "HU" and widget.model.generator.data["modality"] == "CT"
    np.testing.assert_allclose(widget.model.generator.data["pixel_spacing"], ct.spacing)

    # Danger zone: all permissible, then the annotator paints a forbidden region (label 0).
    widget.danger.new_button.native.click()
    danger = widget.danger.layer
    assert danger.data.shape == source.shape and danger.data.min() == 1
    assert danger.colormap.map(np.array([0]))[0, 3] > 0 and danger.opacity < 1  # forbidden pixels are visible
    danger.brush_size = 30
    for point in [(100, 20), (110, 20), (100, 35)]:
        danger.paint(point, 0)
    forbidden = np.asarray(danger.data) == 0
    assert forbidden[100, 20] and forbidden.sum() > 500

    # By hand: a click (a point added to the hand Points layer) in the forbidden region is refused and
    # nothing changes; a click on permissible tissue places a lesion there.
    points = viewer.add_points(name="clicks", ndim=2)
    widget.placement.hand_layer.value = points
    points.add(world(background, (100, 20)))
    assert any("danger zone" in message for message in notifications)
    assert widget.placement.scene == () and widget.dock_layers.result is None and widget.dock_layers.labels is None
    assert len(points.data) == 0  # the refused click leaves no point behind
    points.add(world(background, (100, 90)))
    assert len(widget.placement.scene) == 1 and widget.placement.scene[0].centre == (100, 90) and len(points.data) == 1
    result, labels = widget.dock_layers.result, widget.dock_layers.labels
    assert result.name.endswith(SYNTHETIC_SUFFIX) and labels.name.endswith(SYNTHETIC_SUFFIX)
    provenance = result.metadata["medsynth"]["synthetic"]
    assert provenance["model"] == "singan" and f"lesion seeds 1:{widget.placement.scene[0].seed}" in provenance["description"]

    # A click on the first lesion is refused as such (not as the danger zone), and nothing changes.
    points.add(world(background, (101, 91)))
    assert "overlaps a lesion placed before" in notifications[-1] and len(widget.placement.scene) == 1 and len(points.data) == 1

    # An unexpected failure while placing is shown, its point removed, and the viewer goes on.
    def broken(*_args):
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(LesionSession, "place", broken)
    points.add(world(background, (60, 100)))
    assert notifications[-1] == "RuntimeError: simulated fault" and len(points.data) == 1 and len(widget.placement.scene) == 1
    monkeypatch.undo()

    # The model is CT in HU: an MR image is refused, and the CT scene and its Undo stay as they were.
    mr = read_image(get_testdata_file("MR_small.dcm"))
    mr_data, mr_kwargs, _ = to_layer_data(mr)
    mr_layer = viewer.add_image(mr_data, **mr_kwargs)
    widget.reset_choices()
    widget.background.layer.value = mr_layer
    widget.danger.new_button.native.click()
    widget.placement.sample_button.native.click()
    assert "modality CT vs MR" in notifications[-1]
    assert len(widget.placement.scene) == 1 and widget.dock_layers.result is result and len(widget.placement.session.history) == 1
    viewer.layers.remove(mr_layer)
    widget.reset_choices()
    widget.background.layer.value = background
    widget.dock_layers.danger = danger
    assert ids(labels) == {1}
    lesion = np.asarray(labels.data) == 1
    assert not np.array_equal(np.asarray(result.data)[lesion], source[lesion])
    np.testing.assert_array_equal(np.asarray(result.data)[:40, :40], source[:40, :40])  # far from the lesion
    np.testing.assert_array_equal(background.data, source)  # the source layer is never modified

    # Sample k more from C_final (every permissible place here), seeded, spaced, never overlapping.
    widget.placement.options.set_values({"count": 3, "seed": 7, "min_spacing": 8.0})
    widget.placement.sample_button.native.click()
    assert [p.label_id for p in widget.placement.scene] == [1, 2, 3, 4]
    label_map = np.asarray(labels.data)
    assert ids(labels) == {1, 2, 3, 4} and not (label_map > 0)[forbidden].any()
    for placement in widget.placement.scene:
        assert (label_map == placement.label_id).sum() == placement.lesion.mask.sum()
    before_edit = np.array(result.data)

    # The annotator deletes lesion 2 and moves lesion 3, then re-fuses.
    moved = widget.placement.scene[2]
    free = ~forbidden
    for other in widget.placement.scene:
        if other.label_id != 3:
            free &= ~placed_mask(other, free.shape)
    allowed = allowed_centres(free, moved.lesion.mask)
    shift = next(
        (dy, dx) for dy, dx in [(0, 4), (4, 0), (0, -4), (-4, 0), (4, 4), (-4, -4)] if allowed[moved.centre[0] + dy, moved.centre[1] + dx]
    )
    edited = label_map.copy()
    edited[edited == 2] = 0
    edited[edited == 3] = 0
    edited[np.roll(label_map == 3, shift, axis=(0, 1))] = 3
    labels.data = edited
    widget.placement.options.set_values({"blend": "feather"})  # the re-fuse feathers; Undo must bring back the published fusion
    widget.placement.re_fuse_button.native.click()
    assert widget.placement.session.blend.name == "feather"
    assert [p.label_id for p in widget.placement.scene] == [1, 3, 4]
    assert widget.placement.scene[1].centre == (moved.centre[0] + shift[0], moved.centre[1] + shift[1])
    assert ids(labels) == {1, 3, 4}
    gone = placed_mask(widget.placement.session.history[-1].scene[1], source.shape)
    inner = gone & ~np.asarray(labels.data).astype(bool)
    inner &= np.roll(inner, 2, 0) & np.roll(inner, -2, 0) & np.roll(inner, 2, 1) & np.roll(inner, -2, 1)  # off the seam band
    assert inner.any()
    np.testing.assert_array_equal(np.asarray(result.data)[inner], source[inner].astype(np.float32))

    # A lesion label moved onto forbidden pixels is refused and the scene stays.
    scene = widget.placement.scene
    onto_forbidden = np.asarray(labels.data).copy()
    onto_forbidden[onto_forbidden == 1] = 0
    onto_forbidden[95:105, 15:25] = 1
    labels.data = onto_forbidden
    widget.placement.re_fuse_button.native.click()
    assert widget.placement.scene == scene and notifications[-1].count("danger zone")

    # Undo restores the placements before the re-fuse and their fusion.
    widget.placement.undo_button.native.click()
    assert [p.label_id for p in widget.placement.scene] == [1, 2, 3, 4] and widget.placement.session.blend.name == "published"
    assert ids(labels) == {1, 2, 3, 4}
    np.testing.assert_array_equal(result.data, before_edit)

    # Export: NIfTI, DICOM and DICOM-SEG, all marked synthetic and readable.
    written = widget.placement.export(tmp_path / "out")
    assert written and all(path.is_file() for path in written)
    out = tmp_path / "out"
    image = read_image(next(out.glob("*lesions.nii.gz")))
    assert image.synthetic is not None and image.units == "HU"
    np.testing.assert_allclose(image.array, result.data, atol=1e-3)
    mask = read_image(next(out.glob("*lesions_labels.nii.gz")))
    assert mask.is_label and mask.synthetic is not None
    np.testing.assert_array_equal(mask.array, labels.data)
    dicom = read_image(next(out.glob("*_dicom/*.dcm")))
    assert dicom.synthetic is not None
    np.testing.assert_allclose(dicom.array, result.data, atol=np.ptp(result.data) / 60_000 + 1e-3)
    # medsynth.io reads images, not segmentations: the SEG is read with highdicom.
    seg = hd.seg.segread(next(out.glob("*_seg.dcm")))
    assert seg.SyntheticData == "YES" and len(seg.SegmentSequence) == 4
    source_uid = pydicom.dcmread(next(out.glob("*_dicom/*.dcm"))).SOPInstanceUID
    segments = seg.get_pixels_by_source_instance([source_uid], combine_segments=True, relabel=False)
    np.testing.assert_array_equal(segments[0], np.asarray(labels.data))
    manifest = json.loads(next(out.glob("*lesions.json")).read_text())
    assert [lesion["label_id"] for lesion in manifest["lesions"]] == [1, 2, 3, 4]
    assert manifest["options"]["blend"] == "published"  # as fused, not as the form says now
    for record, placement in zip(manifest["lesions"], widget.placement.scene):
        pixels = np.argwhere(np.asarray(labels.data) == record["label_id"])
        box = [record[k] for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")]
        assert box == [*pixels.min(axis=0), *(pixels.max(axis=0) + 1)] and record["pixels"] == len(pixels)
        np.testing.assert_allclose([record["centroid_y"], record["centroid_x"]], pixels.mean(axis=0), atol=1e-3)
        assert [record["patch_height"], record["patch_width"]] == list(placement.lesion.mask.shape)
        assert record["lesion_seed"] == placement.seed


@pytest.mark.slow
def test_volume_slice_with_rules_danger_prior_and_loaded_model(make_napari_viewer, tmp_path, singan_file, notifications):
    """A volume: lesions go into the shown slice only, placed at the prior's candidates in C_final."""
    ct = load_sample("ct_slice")
    array = np.stack([ct.array, np.flip(ct.array, 1), ct.array])
    volume = MedImage(array, "zyx", (2.0, *ct.spacing), origin=(0.0, *ct.origin), modality="CT", units="HU", name="ct volume")
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(volume)
    background = viewer.add_image(data, **kwargs)
    viewer.dims.set_current_step(0, 1)
    widget = open_widget(viewer)
    widget.background.layer.value = background

    # Placing before there is a model or a danger zone: a notification, nothing placed.
    widget.placement.sample_button.native.click()
    assert widget.placement.scene == () and any("no lesion model" in message for message in notifications)
    assert widget.model.load(singan_file).scales == 2
    widget.placement.sample_button.native.click()
    assert widget.placement.scene == () and "no danger zone" in notifications[-1]

    # Danger zone from the CT rules: the core's mask, on the volume's grid.
    widget.danger.rules_button.native.click()
    np.testing.assert_array_equal(widget.danger.layer.data, bootstrap_danger(volume))
    np.testing.assert_allclose(widget.danger.layer.scale, background.scale)

    # Location prior from a historical label layer with two lesions.
    history = np.zeros((128, 128), dtype=np.uint16)
    history[95:105, 55:65] = 1
    history[100:110, 85:95] = 2
    viewer.add_labels(history, name="historical lesions")
    widget.reset_choices()
    widget.prior.label_layers.value = [viewer.layers["historical lesions"]]
    widget.prior.options.set_values({"top_k": 8})
    widget.prior.show_button.native.click()
    heat = widget.dock_layers.heatmap
    assert heat.blending == "additive" and heat.opacity < 1 and heat.colormap.name == "inferno"
    assert heat.data.shape == (128, 128) and abs(float(heat.data.sum()) - 1) < 1e-3
    candidates = np.asarray(widget.dock_layers.candidates.data)
    assert 1 <= len(candidates) <= 8
    assert np.min(np.linalg.norm(candidates - [99.5, 59.5], axis=1)) < 3  # a peak at an annotated lesion

    widget.placement.options.set_values({"count": 2, "seed": 3, "min_spacing": 0.0, "variability": 1})
    widget.placement.sample_button.native.click()
    assert len(widget.placement.scene) == 2
    permissible = widget.danger.layer.data[1] == 1
    for placement in widget.placement.scene:
        in_final = final_candidates(candidates.astype(int), permissible, placement.lesion.mask)
        assert any(tuple(c) == placement.centre for c in in_final)
    result, labels = widget.dock_layers.result, widget.dock_layers.labels
    assert result.data.shape == volume.array.shape and labels.data.shape == volume.array.shape
    assert ids(labels) == {1, 2} and not np.asarray(labels.data)[[0, 2]].any()  # only the shown slice
    np.testing.assert_array_equal(np.asarray(result.data)[[0, 2]], volume.array[[0, 2]])
    assert not np.array_equal(np.asarray(result.data)[1], volume.array[1])
    np.testing.assert_array_equal(background.data, volume.array)

    # By hand with a dragged box: the lesion is drawn at the box's size, centred in it.
    free = permissible & ~(np.asarray(labels.data)[1] > 0)
    depth = ndimage.distance_transform_edt(np.pad(free, 1))[1:-1, 1:-1]  # outside the image is not free
    cy, cx = np.unravel_index(np.argmax(depth), free.shape)
    assert depth[cy, cx] > 17
    box = np.array([[cy - 12, cx - 12], [cy - 12, cx + 12], [cy + 12, cx + 12], [cy + 12, cx - 12]], dtype=float)
    boxes = viewer.add_shapes([np.array([world(background, (1, y, x)) for y, x in box])], shape_type="rectangle")
    widget.reset_choices()
    widget.placement.hand_layer.value = boxes
    widget.placement.place_button.native.click()
    assert len(widget.placement.scene) == 3 and widget.placement.scene[-1].centre == (cy, cx)
    assert widget.placement.scene[-1].lesion.mask.shape == (24, 24)  # the 20x20 crop scaled to the 24x24 box

    # The crop can also be a label's bounding box in a Labels layer.
    widget.model.crop_layer.value = viewer.layers["historical lesions"]
    widget.model.label_id.value = 2
    values, mask = widget.model.crop()
    np.testing.assert_array_equal(values.array, volume.array[1, 100:110, 85:95])
    assert values.spacing == volume.spacing[1:] and values.units == "HU"
    assert mask.all()

    # A danger zone from a mask file on the image's grid; a file that is no mask is refused.
    mask_file = write_nifti(volume.with_array(np.asarray(widget.danger.layer.data), is_label=True), tmp_path / "danger.nii.gz")
    expected = np.array(widget.danger.layer.data)
    widget.danger.new_button.native.click()
    widget.danger.load(mask_file)
    np.testing.assert_array_equal(widget.danger.layer.data, expected)
    widget.danger.load(write_nifti(volume, tmp_path / "ct.nii.gz"))
    assert "holds 1 (permissible) and 0 (forbidden)" in notifications[-1]
    np.testing.assert_array_equal(widget.danger.layer.data, expected)

    # On another slice, a refused placement changes nothing: the scene of slice 1 and its Undo stay.
    viewer.dims.set_current_step(0, 0)
    scene, history = widget.placement.scene, list(widget.placement.session.history)
    widget.placement.options.set_values({"count": 3, "min_spacing": 200.0})
    widget.placement.sample_button.native.click()
    assert "no permissible place" in notifications[-1]
    assert widget.placement.scene == scene and list(widget.placement.session.history) == history and widget.dock_layers.result is result
    # A placement that succeeds there starts a new session: the earlier result layers stay, new ones are made.
    widget.placement.options.set_values({"count": 2, "min_spacing": 0.0})
    widget.placement.sample_button.native.click()
    assert widget.dock_layers.result is not result and ids(widget.dock_layers.labels) == {1, 2}
    assert np.asarray(widget.dock_layers.labels.data)[0].any() and not np.asarray(widget.dock_layers.labels.data)[1].any()


@pytest.mark.slow
def test_learned_models_pixel_edge_crop_and_spacing_from_hand_lesions(
    make_napari_viewer, singan_file, learned_checkpoints, notifications
):
    danger_model, heatmap_model = learned_checkpoints
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(load_sample("ct_slice"))
    background = viewer.add_image(data, **kwargs)
    source = np.array(background.data)
    widget = open_widget(viewer)
    widget.background.layer.value = background
    widget.model.load(singan_file)

    # A crop drawn along the pixel edges napari shows (k +- 0.5) holds exactly those pixels, although
    # the Shapes layer stores the corners as float32 world millimetres.
    edges = [world(background, p) for p in [(43.5, 43.5), (43.5, 63.5), (63.5, 63.5), (63.5, 43.5)]]
    widget.model.crop_layer.value = viewer.add_shapes([np.array(edges)], shape_type="rectangle", name="crop")
    np.testing.assert_array_equal(widget.model.crop()[0].array, source[44:64, 44:64])

    # The danger zone predicted by a danger-unet checkpoint; another checkpoint is refused with a notification.
    widget.danger.load(danger_model)
    predicted = predict_danger(danger_model, layer_image(background))
    np.testing.assert_array_equal(widget.danger.layer.data, predicted)
    assert 0.2 < predicted.mean() < 0.9
    widget.danger.load(heatmap_model)
    assert "needs a 'danger-unet' checkpoint" in notifications[-1]
    np.testing.assert_array_equal(widget.danger.layer.data, predicted)

    # The location model: a lesion-heatmap checkpoint's heatmap of the shown plane and its peaks.
    widget.prior.options.set_values({"top_k": 200, "min_distance": 3})
    widget.prior.load(heatmap_model)
    heat = HeatmapModel.load(heatmap_model).plane_heatmap(source)
    np.testing.assert_allclose(widget.dock_layers.heatmap.data, heat)
    peaks, _ = top_candidates(heat, 200, 3)
    np.testing.assert_array_equal(widget.dock_layers.candidates.data, peaks)
    assert widget.prior.status.value.startswith("lesion-heatmap model checkpoint-")
    model = widget.prior.model
    widget.prior.load(danger_model)
    assert "needs a 'lesion-heatmap' checkpoint" in notifications[-1] and widget.prior.model is model

    # A lesion by hand, then two sampled at the heatmap's candidates: no two centres closer than the spacing.
    depth = ndimage.distance_transform_edt(np.pad(predicted == 1, 1))[1:-1, 1:-1]
    cy, cx = (int(v) for v in np.unravel_index(np.argmax(depth), depth.shape))
    points = viewer.add_points(name="clicks", ndim=2)
    widget.reset_choices()
    widget.placement.hand_layer.value = points
    points.add(world(background, (cy, cx)))
    assert [p.centre for p in widget.placement.scene] == [(cy, cx)]
    widget.placement.options.set_values({"count": 2, "seed": 0, "min_spacing": 25.0})
    widget.placement.sample_button.native.click()
    assert len(widget.placement.scene) == 3, notifications[-1:]
    centres = np.array([p.centre for p in widget.placement.scene], dtype=float)
    assert np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(3, 1)].min() >= 25
    assert {p.centre for p in widget.placement.scene[1:]} <= {tuple(p) for p in peaks.tolist()}
    labels = np.asarray(widget.dock_layers.labels.data)
    assert ids(widget.dock_layers.labels) == {1, 2, 3} and not labels[predicted == 0].any()


def test_results_leave_the_overlays_visible_and_the_next_click_placing(make_napari_viewer, singan_file):
    """Issue 10: the fusion lies over its background (placed beside another sample) under the danger zone and
    the prior; the clicked Points layer stays active; the dock's own lesion labels are no prior layer."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medsynth", "mr_slice")
    viewer.open_sample("napari-medsynth", "ct_slice")
    background = viewer.layers["ct_slice"]
    assert background.translate[-1] > 0  # placed beside the MR slice, not at the world origin
    history = np.zeros(background.data.shape, dtype=np.uint8)
    history[95:105, 55:65] = 1
    earlier = viewer.add_labels(history, name="earlier lesions", scale=background.scale, translate=background.translate)
    widget = open_widget(viewer)
    widget.background.layer.value = background
    widget.model.load(singan_file)
    widget.danger.new_button.native.click()
    widget.prior.label_layers.value = [earlier]
    widget.prior.show_button.native.click()
    danger, heatmap, candidates = widget.dock_layers.danger, widget.dock_layers.heatmap, widget.dock_layers.candidates
    points = viewer.add_points(name="clicks", ndim=2)
    points.mode = "add"
    widget.placement.hand_layer.value = points
    assert viewer.layers.selection.active is points

    points.add(world(background, (60, 90)))
    assert len(widget.placement.scene) == 1
    result, labels = widget.dock_layers.result, widget.dock_layers.labels
    # The annotator's layer is still the active one, in add mode: the next click places a second lesion.
    assert viewer.layers.selection.active is points and points.mode == "add"
    points.add(world(background, (30, 40)))
    assert len(widget.placement.scene) == 2 and widget.dock_layers.result is result
    assert viewer.layers.selection.active is points

    # The fusion hides the background it replaces, not the overlays: right above the background, under the
    # translucent danger zone and the additive heatmap; the lesion labels on top, to edit.
    order = list(viewer.layers)
    assert order.index(result) == order.index(background) + 1
    assert order.index(result) < min(order.index(danger), order.index(heatmap), order.index(candidates))
    assert order[-1] is labels and labels.contour > 0 and danger.opacity < 1 and heatmap.blending == "additive"
    for layer in (result, labels, danger, heatmap):
        np.testing.assert_allclose(layer.translate, background.translate)
        np.testing.assert_allclose(layer.scale, background.scale)

    # The lesion labels the dock made are no historical lesions, nor the danger zone a crop.
    prior_choices = widget.prior.label_layers.choices
    assert earlier in prior_choices and labels not in prior_choices and danger not in prior_choices
    assert danger not in widget.model.crop_layer.choices and heatmap not in widget.background.layer.choices

    # The SinGAN's settings are folded under Advanced settings, with their Reset defaults.
    widget.model.settings.set_values({"iterations": 5})
    [reset] = [button for button in widget.model.findChildren(QPushButton) if button.text() == "Reset defaults"]
    reset.click()
    assert widget.model.settings.values()["iterations"] == SinGANSettings().iterations


@pytest.mark.slow
def test_singan_status_ends_with_the_trained_model(make_napari_viewer, qtbot):
    """Issue 10: after training, completed or stopped, the status says what model there is, not a progress line."""
    _, _, widget = open_with_crop(make_napari_viewer)
    model = widget.model
    statuses: list[str] = []
    show_event = model._on_event

    def shown_status(event):  # the status after each training event, as the annotator saw it
        show_event(event)
        statuses.append(model.status.value)

    model._on_event = shown_status

    model.settings.set_values(TINY)
    model.run_options.set_values({"log_every": 1})
    model.train_button.native.click()
    qtbot.waitUntil(lambda: model.generator is not None and model.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert any(status.startswith("step ") for status in statuses), statuses  # progress was shown while training
    total = TINY["iterations"] * 2
    assert model.status.value == f"trained SinGAN: 2 of 2 scales, step {total}"

    # Stopped during its first scale: the model keeps that scale, and the status says the rest is upsampled.
    model.settings.set_values({"iterations": 5000})
    model.train_button.native.click()
    qtbot.waitUntil(lambda: model.status.value.startswith("step "), timeout=WAIT_MS)
    model.stop_button.native.click()
    qtbot.waitUntil(lambda: model.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert model.generator.step < 5000
    assert model.status.value == (
        f"trained SinGAN: 1 of 2 scales, step {model.generator.step}; stopped early, the finer scales upsampled"
    )


def test_a_lesion_larger_than_what_fits_is_refused_naming_the_size_option(
    make_napari_viewer, singan_file, notifications
):
    """Issue 10: a lesion too large for the plane, or for the permissible zone, is refused with the option to lower."""
    viewer = make_napari_viewer()
    data, kwargs, _ = to_layer_data(load_sample("ct_slice"))
    background = viewer.add_image(data, **kwargs)
    widget = open_widget(viewer)
    widget.background.layer.value = background
    widget.model.load(singan_file)
    widget.danger.new_button.native.click()
    points = viewer.add_points(name="clicks", ndim=2)
    widget.placement.hand_layer.value = points
    assert "size" in widget.placement.options.values()  # the option the messages name, as the form shows it

    # Eight times the 20 px training crop is larger than the 128 px slice, wherever the click is.
    widget.placement.options.set_values({"size": 8.0})
    points.add(world(background, (64, 64)))
    assert "larger than the 128x128 px image plane" in notifications[-1]
    assert 'lower the placement option "size" (now 8) to ' in notifications[-1]
    assert len(points.data) == 0 and widget.placement.scene == () and widget.dock_layers.result is None
    widget.placement.sample_button.native.click()
    assert 'lower the placement option "size" (now 8)' in notifications[-1] and widget.placement.scene == ()

    # The suggested size fits the plane; with most of it forbidden, a lesion of twice the crop fits nowhere.
    suggested = float(notifications[-1].rsplit(" to ", 1)[1].split()[0])
    widget.danger.layer.data = np.zeros(background.data.shape, dtype=np.uint8)
    widget.danger.layer.data[40:70, 40:70] = 1
    widget.placement.options.set_values({"size": 2.0})
    points.add(world(background, (55, 55)))
    assert 'fits nowhere in the permissible zone; lower the placement option "size" (now 2)' in notifications[-1]
    assert widget.placement.scene == ()
    widget.danger.layer.data = np.ones(background.data.shape, dtype=np.uint8)
    widget.placement.options.set_values({"size": suggested, "count": 1})
    widget.placement.sample_button.native.click()
    assert len(widget.placement.scene) == 1


@pytest.mark.slow
def test_a_generated_background_becomes_the_synthetic_background_lesions_go_into(
    make_napari_viewer, qtbot, background_model, singan_file, notifications
):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    section = widget.background
    section.device = "cpu"
    section.generate_button.native.click()  # no model chosen yet
    assert notifications[-1] == "InputError: no background model chosen; choose a vqgan-hdfb or vqgan checkpoint"
    assert len(viewer.layers) == 0
    section.model_file.value = singan_file  # a lesion model is no background model
    section.generate_button.native.click()
    qtbot.waitUntil(lambda: section.run.state is RunState.IDLE, timeout=WAIT_MS)
    assert len(viewer.layers) == 0 and "singan" in notifications[-1].lower()

    section.model_file.value = background_model
    section.seed.value = 5
    section.generate_button.native.click()
    assert not section.generate_button.enabled  # one background at a time
    qtbot.waitUntil(lambda: len(viewer.layers) == 1 and section.run.state is RunState.IDLE, timeout=WAIT_MS)
    layer = viewer.layers[0]
    expected = generate_backgrounds(background_model, 1, seed=5, device="cpu")[0]  # the same seed, the same image
    assert section.layer.value is layer and layer.name.endswith(SYNTHETIC_SUFFIX) and section.generate_button.enabled
    np.testing.assert_array_equal(layer.data, expected.array)
    image = layer_image(layer)
    assert image.synthetic.model == "vqgan-hdfb" and (image.modality, image.units) == ("CT", "HU")
    np.testing.assert_allclose(image.spacing, expected.spacing)

    # Lesions go into it as into any background; the fused image names both models.
    assert widget.model.load(singan_file) is not None
    widget.danger.new_button.native.click()
    widget.placement.options.set_values({"count": 1, "seed": 3, "size": 0.8})
    widget.placement.sample_button.native.click()
    assert len(widget.placement.scene) == 1
    provenance = widget.dock_layers.result.metadata["medsynth"]["synthetic"]
    assert provenance["model"] == "singan" and "background SYNTHETIC" in provenance["description"]
    assert "recipe=vqgan-hdfb" in provenance["description"] and "seed=5" in provenance["description"]
    assert widget.dock_layers.result.data.shape == layer.data.shape
    np.testing.assert_array_equal(layer.data, expected.array)  # the generated layer itself is never modified
