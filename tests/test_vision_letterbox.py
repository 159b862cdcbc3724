"""Properties of the pre-processing: network-sized output, aspect ratio kept, padding centred,
and boxes mapped back to the source pixels they came from."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

cv2 = pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")

from companion.vision.preprocess import letterbox, prepare, stretch  # noqa: E402

sizes = st.tuples(st.integers(1, 900), st.integers(1, 900))
nets = st.sampled_from([(416, 416), (320, 320), (256, 416), (416, 256)])


@settings(max_examples=80, deadline=None)
@given(sizes, nets)
def test_letterbox_keeps_aspect_and_centres(size, net):
    h, w = size
    image = np.full((h, w, 3), 7, np.uint8)
    out, t = letterbox(image, net)
    assert out.shape == (net[0], net[1], 3)
    # the content is the scaled image, the rest is padding, split evenly (within a pixel)
    content = np.argwhere(out[:, :, 0] == 7)
    (top, left), (bottom, right) = content.min(0), content.max(0) + 1
    assert top == t.pad_y and left == t.pad_x
    assert abs((net[0] - bottom) - top) <= 1 and abs((net[1] - right) - left) <= 1
    assert (bottom - top == net[0]) or (right - left == net[1])  # touches one side pair
    assert abs(t.scale_x - t.scale_y) <= 1.0 / min(h, w) + 1e-9 or min(h, w) == 1
    assert (out[:, :, 0] == 114).sum() == out.shape[0] * out.shape[1] - len(content)


@settings(max_examples=80, deadline=None)
@given(sizes, nets, st.sampled_from(["letterbox", "stretch"]))
def test_boxes_map_back_to_source_pixels(size, net, mode):
    h, w = size
    tensor, t = prepare(np.zeros((h, w, 3), np.uint8), net, mode)
    assert tensor.shape == (1, 3, net[0], net[1]) and tensor.dtype == np.float32
    # the source image's corners, pushed forward, come back to the corners
    forward = np.array(
        [[t.pad_x, t.pad_y, t.pad_x + w * t.scale_x, t.pad_y + h * t.scale_y]], np.float32
    )
    np.testing.assert_allclose(t.to_source(forward)[0], [0, 0, w, h], atol=1e-3 * max(w, h))
    # anything outside the image (the padding) clips to its edge
    outside = np.array([[-50, -50, net[1] + 50, net[0] + 50]], np.float32)
    np.testing.assert_allclose(t.to_source(outside)[0], [0, 0, w, h])


def test_tensor_is_rgb_in_unit_range():
    image = np.zeros((10, 20, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    tensor, _ = prepare(image, (32, 32), "stretch")
    assert tensor[0, 2].min() == pytest.approx(1.0) and tensor[0, 0].max() == 0.0


def test_stretch_matches_opencv_blob():
    image = np.random.default_rng(0).integers(0, 255, (123, 77, 3), dtype=np.uint8)
    tensor, _ = prepare(image, (416, 416), "stretch")
    blob = cv2.dnn.blobFromImage(image, 1 / 255.0, (416, 416), swapRB=True, crop=False)
    np.testing.assert_array_equal(tensor, blob)
    resized, t = stretch(image, (416, 416))
    assert resized.shape == (416, 416, 3) and t.pad_x == t.pad_y == 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="letterbox"):
        prepare(np.zeros((4, 4, 3), np.uint8), (8, 8), "crop")
