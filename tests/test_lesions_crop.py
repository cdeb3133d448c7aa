"""napari Shapes coordinates to pixel boxes: pixel centres, float32 noise, boxes partly or wholly outside the image."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.geometry import pixel_index, rectangle_box
from medsynth.data.samples import load_sample
from medsynth.errors import InputError
from medsynth.lesions.crop import lesion_crop


def _rectangle(y0: float, x0: float, y1: float, x1: float, z: float | None = None) -> np.ndarray:
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=np.float32)  # napari stores float32
    return corners if z is None else np.column_stack([np.full(4, z, np.float32), corners])


@pytest.mark.parametrize(
    ("corners", "box"),
    [
        ((10.0, 20.0, 30.0, 40.0), (10, 20, 30, 40)),  # through pixel centres: the first row/column in, the last out
        ((9.5, 19.5, 29.5, 39.5), (10, 20, 30, 40)),  # along the pixel edges napari draws: exactly those pixels
        ((9.4999, 19.5001, 29.4999, 39.5001), (10, 20, 30, 40)),  # float32 noise of a round trip through millimetres
        ((10.4999, 10.5, 20.4989, 20.5), (11, 11, 21, 21)),
        ((10.0004, 9.9996, 20.0011, 19.9989), (10, 10, 21, 20)),  # within 1/1000 px of a centre counts as on it
        ((10.2, 20.7, 33.9, 40.1), (11, 21, 34, 41)),  # hand-drawn: pixels whose centres are inside
        ((-0.2, -3.7, 5.5, 6.5), (0, 0, 6, 7)),  # partly outside: clipped to the image
        ((120.3, 110.0, 140.0, 200.0), (121, 110, 128, 128)),
    ],
)
def test_rectangle_box_holds_the_pixels_whose_centres_lie_inside(corners, box):
    assert rectangle_box(_rectangle(*corners), (128, 128)) == box


def test_rectangle_box_of_a_3d_layer_and_the_crop_it_cuts():
    plane = np.asarray(load_sample("ct_slice").array, dtype=np.float32)
    box = rectangle_box(_rectangle(43.5, 43.5, 63.5, 63.5, z=1.0), plane.shape)
    values, mask = lesion_crop(plane, box)
    np.testing.assert_array_equal(values, plane[44:64, 44:64])
    assert mask.shape == (20, 20) and mask[10, 10] and not mask[0, 0]


def test_empty_or_outside_rectangles_are_refused_with_the_fix():
    with pytest.raises(InputError, match=r"holds no pixel centre; draw a larger box"):
        rectangle_box(_rectangle(10.2, 10.0, 10.8, 30.0), (128, 128))  # thinner than one pixel centre
    with pytest.raises(InputError, match=r"lies outside the 128x128 image; draw it on the image"):
        rectangle_box(_rectangle(-20.0, -20.0, -1.0, 50.0), (128, 128))
    with pytest.raises(InputError, match="at least two"):
        rectangle_box(np.array([[1.0, 2.0]]), (128, 128))
    with pytest.raises(InputError, match="non-finite"):
        rectangle_box(_rectangle(np.nan, 0.0, 10.0, 10.0), (128, 128))


@pytest.mark.parametrize(
    ("coords", "pixel"),
    [((10.4989, 9.5), (10, 10)), ((10.4999, 10.5), (11, 11)), ((-0.2, -0.5), (0, 0)), ((-0.5011, 127.4999), (-1, 128))],
)
def test_pixel_index_is_the_pixel_holding_the_point(coords, pixel):
    assert pixel_index(np.asarray(coords, dtype=np.float64)) == pixel
