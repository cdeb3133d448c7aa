"""Where layers appear in a real viewer: labelled sliders, sequences at frame 0, samples beside each other,
and stacks of sequences on the real cine's time slider."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medsynth.data.samples import SAMPLES, sample_path
from medsynth.io.image import MedImage
from napari_medsynth.axes import samples_first
from napari_medsynth.layers import from_layer, to_layer_data

pytestmark = pytest.mark.gui


def test_a_cine_sample_has_labelled_sliders_and_opens_at_frame_0(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medsynth", "us_cine")
    cine = viewer.layers["us_cine"]
    assert viewer.dims.axis_labels == ("t", "y", "x")
    assert cine.scale[0] == pytest.approx(33.333)  # the frame time, so that sliders of two cines agree
    assert cine.world_to_data(viewer.dims.point)[0] == 0  # napari alone would open at the middle frame


def test_a_cine_opened_from_a_file_after_a_volume_starts_at_its_first_frame(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medsynth", "mni152")
    assert viewer.dims.axis_labels == ("z", "y", "x")
    [cine] = viewer.open(sample_path("us_cine"), plugin="napari-medsynth")
    assert cine.axis_labels == ("t", "y", "x")
    assert round(cine.world_to_data(viewer.dims.point)[0]) == 0


def test_samples_opened_together_lie_side_by_side_and_the_assumed_spacing_is_said(
    make_napari_viewer, notifications, in_view
):
    viewer = make_napari_viewer()
    for name in sorted(SAMPLES):
        viewer.open_sample("napari-medsynth", name)
    boxes = {layer.name: layer.extent.world[:, -2:] for layer in viewer.layers}
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        overlap = np.all(box_a[0] < box_b[1]) and np.all(box_b[0] < box_a[1])
        assert not overlap, f"{a} and {b} overlap: {box_a.tolist()} {box_b.tolist()}"
    assert all(in_view(viewer, layer) for layer in viewer.layers if layer.ndim == 2)
    assert any("chest_xray" in message and "1 mm assumed" in message for message in notifications)


def test_the_template_and_its_tissue_maps_open_on_one_grid_as_a_fusion_pair(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("mni152", "mni152_gm", "mni152_wm"):
        viewer.open_sample("napari-medsynth", name)
    t1, gm, wm = (viewer.layers[name].extent.world for name in ("mni152", "mni152_gm", "mni152_wm"))
    np.testing.assert_allclose(gm, t1)
    np.testing.assert_allclose(wm, t1)
    viewer.open_sample("napari-medsynth", "ct_slice")  # another patient: beside them, as before
    assert viewer.layers["ct_slice"].extent.world[0, -1] > t1[1, -1]


def test_a_stack_of_sequences_is_shown_samples_first_and_written_back_time_first():
    frames = np.random.default_rng(0).normal(size=(5, 2, 16, 12)).astype(np.float32)  # (T, N, y, x)
    image = MedImage(frames, "tzyx", (1.0, 0.5, 0.25), time_spacing=33.3, metadata={"sample_axis": 1})

    data, kwargs, _ = samples_first(image, to_layer_data(image))

    assert data.shape == (2, 5, 16, 12) and np.shares_memory(data, frames)
    assert kwargs["axis_labels"] == ("sample", "t", "y", "x")
    assert kwargs["scale"][:2] == [1.0, 33.3]
    back = from_layer(data, kwargs)
    assert back.axes == "tzyx" and back.time_spacing == 33.3 and back.spacing == (1.0, 0.5, 0.25)
    np.testing.assert_array_equal(back.array, frames)
