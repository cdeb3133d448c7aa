"""The plugin's reader, writers and sample data, driven through a real napari viewer."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.io import MedImage, SyntheticProvenance, read_image
from napari_medsynth.layers import DEFAULT_CT_WINDOW, from_layer, to_layer_data

pytestmark = pytest.mark.gui


def _error_messages():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


def _oblique_image() -> MedImage:
    angle = np.deg2rad(20)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    return MedImage(data, "zyx", spacing=(3.0, 0.8, 0.7), origin=(-20.0, 11.0, 5.5), direction=rotation,
                    modality="MR", name="oblique")


def test_layer_round_trip_keeps_oblique_geometry():
    data, kwargs, kind = to_layer_data(_oblique_image())
    back = from_layer(data, kwargs)
    original = _oblique_image()
    assert kind == "image"
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-9)
    assert back.axes == "zyx" and back.modality == "MR"


def test_layer_world_position_of_a_voxel_matches_the_image_affine(make_napari_viewer):
    viewer = make_napari_viewer()
    image = _oblique_image()
    layer = viewer.add_layer(_as_layer(to_layer_data(image)))
    index = np.array([2.0, 3.0, 4.0])
    expected = (image.affine @ np.append(index, 1.0))[:3]
    np.testing.assert_allclose(layer.data_to_world(index), expected, atol=1e-6)


def _as_layer(layer_tuple):
    from napari.layers import Layer

    return Layer.create(*layer_tuple)


def test_open_4d_nifti_gives_time_slider_layer(make_napari_viewer, nibabel_example4d):
    viewer = make_napari_viewer()
    layers = viewer.open(str(nibabel_example4d), plugin="napari-medsynth")
    assert len(layers) == 1
    layer = layers[0]
    image = read_image(nibabel_example4d)
    assert layer.data.shape == image.array.shape and layer.ndim == 4
    np.testing.assert_allclose(layer.scale[1:], image.spacing)
    assert layer.metadata["medsynth"]["axes"] == "tzyx"
    assert viewer.dims.nsteps[0] == image.array.shape[0]  # the time slider


def test_open_us_cine_multiframe(make_napari_viewer, us_cine_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(us_cine_path), plugin="napari-medsynth")
    assert layer.data.shape == (120, 480, 640)
    assert layer.metadata["medsynth"]["modality"] == "US"


def test_sample_data_ct_is_in_hu_with_ct_window(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medsynth", "ct_slice")
    layer = viewer.layers[-1]
    assert layer.metadata["medsynth"]["units"] == "HU"
    assert layer.data.min() < -500  # air in HU (stored 128 - 1024), not raw stored values
    # CT_small.dcm names no window of its own, so the soft-tissue default applies.
    assert tuple(layer.contrast_limits) == DEFAULT_CT_WINDOW


@pytest.mark.parametrize("content", [b"this is not DICOM at all" * 10, b"DICM"])
def test_bad_dicom_is_a_notification_and_the_viewer_survives(make_napari_viewer, tmp_path, content):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(content)
    before = bad.read_bytes()
    viewer.open(str(bad), plugin="napari-medsynth")
    assert len(viewer.layers) == 0
    assert any("broken.dcm" in message for message in _error_messages())
    assert bad.read_bytes() == before
    viewer.open_sample("napari-medsynth", "ct_slice")  # still working
    assert len(viewer.layers) == 1


def test_save_image_layer_as_nifti_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medsynth", "ct_slice")
    layer = viewer.layers[0]
    path = tmp_path / "ct.nii.gz"
    viewer.layers.selection = {layer}
    written = viewer.layers.save(str(path), selected=True, plugin="napari-medsynth")
    assert written == [str(path)]
    back = read_image(path)
    np.testing.assert_allclose(back.array, np.asarray(layer.data), atol=1e-3)
    np.testing.assert_allclose(back.spacing, layer.scale, rtol=1e-6)


def test_save_labels_layer_as_label_map(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((3, 16, 16), dtype=np.int32)
    labels[1, 4:8, 4:8] = 1
    labels[2, 10:12, 3:9] = 300
    layer = viewer.add_labels(labels, scale=(2.5, 0.5, 0.5), name="lesions")
    viewer.layers.selection = {layer}
    path = tmp_path / "lesions_seg.nii.gz"
    viewer.layers.save(str(path), selected=True, plugin="napari-medsynth")
    back = read_image(path)
    assert back.is_label and back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, labels)
    np.testing.assert_allclose(back.spacing, (2.5, 0.5, 0.5))


def test_synthetic_images_are_named_and_tagged(make_napari_viewer):
    viewer = make_napari_viewer()
    provenance = SyntheticProvenance(model="dcgan", model_version="0.1.0", seed=3)
    image = MedImage(np.zeros((8, 8), np.float32), "yx", spacing=(1.0, 1.0), name="samples", synthetic=provenance)
    layer = viewer.add_layer(_as_layer(to_layer_data(image)))
    assert layer.name.endswith("[SYNTHETIC]")
    assert layer.metadata["medsynth"]["synthetic"]["model"] == "dcgan"
    assert from_layer(layer.data, layer.as_layer_data_tuple()[1]).synthetic == provenance


def test_a_layer_of_more_than_four_dimensions_is_an_input_error_naming_it():
    from medsynth.errors import InputError

    with pytest.raises(InputError, match="layer 'stack' has 5 dimensions.*2D .* 4D .*one channel or one time point"):
        from_layer(np.zeros((2, 2, 3, 4, 4), dtype=np.float32), {"name": "stack"})
    assert from_layer(np.zeros((2, 3, 4, 4), dtype=np.float32), {"name": "cine"}).axes == "tzyx"
