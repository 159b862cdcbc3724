"""FaceAnalyzer on real images with the real dlib models: detection on a downscaled frame or a
region of interest, landmarks in full-frame pixels, embeddings, and each quality gate
refusing with its reason."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from companion.identity.errors import FaceModelError, FaceRejected
from companion.identity.faces import (
    HOG_MIN_EYE_CHIN_PX,
    FaceAnalyzer,
    FaceBox,
    QualityLimits,
    _require,
    eye_chin_px,
    head_pose,
)
from tests.face_images import ANCELOTTI, ancelotti, bus_man, nose_moved, on_canvas, side_by_side


def test_detects_ancelotti_in_zidane_jpg_on_a_downscaled_frame(analyzer, zidane):
    assert analyzer.detect_scale == pytest.approx(HOG_MIN_EYE_CHIN_PX / 70.0)
    faces = analyzer.detect(zidane)
    # Zidane is in profile (a frontal detector does not find him); Ancelotti is found, in
    # full-frame pixels although the detector saw a frame scaled by 0.69.
    assert len(faces) == 1
    face = faces[0]
    assert 900 < face.left < 940 and 110 < face.top < 150
    assert 140 < face.width < 170 and 140 < face.height < 170


def _iou(a: FaceBox, b: FaceBox) -> float:
    inter = FaceBox(
        max(a.left, b.left), max(a.top, b.top), min(a.right, b.right), min(a.bottom, b.bottom)
    )
    overlap = inter.area if inter.width > 0 and inter.height > 0 else 0
    return overlap / (a.area + b.area - overlap)


def test_region_of_interest_finds_the_same_face_and_nothing_outside(analyzer, zidane):
    full = analyzer.detect(zidane)[0]
    person = (760.0, 20.0, 1279.0, 719.0)  # what the person detector would box
    in_roi = analyzer.detect(zidane, roi=person)
    assert len(in_roi) == 1
    # The HOG cells (8 pixels of the scaled image) fall differently: about the same box.
    assert _iou(in_roi[0], full) > 0.7
    assert analyzer.detect(zidane, roi=(0, 0, 700, 720)) == []
    assert analyzer.detect(zidane, roi=(5000, 5000, 6000, 6000)) == []  # clipped to nothing


def test_a_face_of_the_minimum_size_is_found_at_1280x720(analyzer, zidane):
    """The detection scale is chosen so that the smallest face the gates accept (70 px eyes
    to chin) is still found; a face shrunk to that size on a 1280 x 720 frame is."""
    photo = ancelotti(zidane)
    base = analyzer.analyse_frame(photo).quality.eye_chin_px
    frame = on_canvas(photo, 72.0 / base)
    faces = analyzer.detect(frame)
    assert len(faces) == 1
    assert eye_chin_px(analyzer.landmarks68(frame, faces[0])) >= 70.0


def test_landmarks68_are_full_frame_pixels(analyzer, zidane):
    box = analyzer.detect(zidane)[0]
    points = analyzer.landmarks68(zidane, box)
    assert points.shape == (68, 2)
    assert np.isfinite(points).all()
    # Inside (about) the face box, in the frame's own coordinates.
    assert box.left - 20 < points[:, 0].min() and points[:, 0].max() < box.right + 20
    assert box.top - 40 < points[:, 1].min() and points[:, 1].max() < box.bottom + 20
    # The same face in a crop has the same landmarks, offset by the crop's corner.
    x0, y0 = ANCELOTTI[0], ANCELOTTI[1]
    photo = ancelotti(zidane)
    in_crop = analyzer.landmarks68(
        photo, FaceBox(box.left - x0, box.top - y0, box.right - x0, box.bottom - y0)
    )
    assert np.abs(in_crop + np.array([x0, y0]) - points).max() < 1.0


def test_analyse_gives_an_embedding_and_quality(analyzer, zidane):
    sample = analyzer.analyse_frame(zidane)
    assert sample.embedding.shape == (128,) and sample.embedding.dtype == np.float32
    assert np.isfinite(sample.embedding).all()
    assert sample.landmarks68.shape == (68, 2)
    quality = sample.quality
    assert 100 < quality.eye_chin_px < 125
    assert quality.sharpness > analyzer.limits.min_sharpness
    assert abs(quality.yaw_deg) < 35 and abs(quality.pitch_deg) < 30
    assert sample.faces_in_frame == 1


def test_the_same_face_rescaled_brightened_recompressed_stays_close(analyzer, zidane):
    reference = analyzer.analyse_frame(ancelotti(zidane)).embedding
    photo = ancelotti(zidane)
    variants = {
        "rescaled": cv2.resize(photo, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA),
        "brightened": cv2.convertScaleAbs(photo, alpha=1.2, beta=30),
        "jpeg q40": cv2.imdecode(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], 1),
        "grey": cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY),
    }
    for name, image in variants.items():
        distance = float(np.linalg.norm(analyzer.analyse_frame(image).embedding - reference))
        assert distance < 0.2, name


def test_a_different_person_is_far(analyzer, zidane, bus):
    one = analyzer.analyse_frame(ancelotti(zidane)).embedding
    other = analyzer.analyse_frame(bus_man(bus)).embedding
    assert float(np.linalg.norm(one - other)) > 0.7


def test_too_small(zidane):
    """A face the detector finds (at full scale) but under the size limit is refused."""
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    analyzer = FaceAnalyzer(detect_scale=1.0)
    photo = ancelotti(zidane)
    small = cv2.resize(photo, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    with pytest.raises(FaceRejected) as caught:
        analyzer.analyse_frame(small)
    assert caught.value.reason == "too-small"
    assert "under the minimum 70 px" in str(caught.value)


def test_blurred(analyzer, zidane):
    photo = cv2.GaussianBlur(ancelotti(zidane), (0, 0), 1.5)
    with pytest.raises(FaceRejected) as caught:
        analyzer.analyse_frame(photo)
    assert caught.value.reason == "blurred"
    assert "variance of the Laplacian" in caught.value.detail


def test_off_angle(analyzer, zidane):
    """Ancelotti looks 23 degrees aside; moving his nose further towards his far eye (what a
    further turn does to the image) is refused, moving it back towards the middle is not."""
    photo = ancelotti(zidane)
    sample = analyzer.analyse_frame(photo)
    assert sample.quality.yaw_deg > 15
    nose = tuple(sample.landmarks68[30])
    with pytest.raises(FaceRejected) as caught:
        analyzer.analyse_frame(nose_moved(photo, nose, dx=25, radius=20))
    assert caught.value.reason == "off-angle"
    assert "head turned +" in caught.value.detail
    frontal = analyzer.analyse_frame(nose_moved(photo, nose, dx=-20, radius=20))
    assert abs(frontal.quality.yaw_deg) < sample.quality.yaw_deg


def _frontal() -> np.ndarray:
    """A symmetric 68-point face: eye centres at x 40 and 80, nose tip 1.06 half-eye-distances
    below them, chin at 100."""
    points = np.zeros((68, 2))
    points[36:42] = (40.0, 50.0)
    points[42:48] = (80.0, 50.0)
    points[30] = (60.0, 50.0 + 1.06 * 20.0)
    points[8] = (60.0, 100.0)
    return points


def test_head_pose_from_landmarks():
    assert head_pose(_frontal()) == pytest.approx((0.0, 0.0), abs=1e-6)
    turned = _frontal()
    turned[30, 0] += 20.0 * 1.1 * np.tan(np.radians(40.0))  # the model's 40 degree turn
    assert head_pose(turned)[0] == pytest.approx(40.0, abs=0.5)
    turned[:, 0] *= -1  # mirrored: the other way (the image-left eye is still 36..41)
    turned[36:48] = np.concatenate([turned[42:48], turned[36:42]])
    assert head_pose(turned)[0] == pytest.approx(-40.0, abs=0.5)
    down = _frontal()
    down[30, 1] += 12.0
    assert head_pose(down)[1] > 20.0
    # Roll does not count as yaw or pitch.
    angle = np.radians(30.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = _frontal() @ rotation.T
    assert head_pose(rolled) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert eye_chin_px(_frontal()) == pytest.approx(50.0)


def test_off_angle_limit_applies_to_pitch(zidane):
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    strict = FaceAnalyzer(QualityLimits(max_pitch_deg=0.1))
    with pytest.raises(FaceRejected) as caught:
        strict.analyse_frame(ancelotti(zidane))
    assert caught.value.reason == "off-angle"


def test_several_faces_uses_the_largest_and_says_so(analyzer, zidane, bus):
    frame = side_by_side(bus_man(bus), ancelotti(zidane))
    sample = analyzer.analyse_frame(frame)
    assert sample.faces_in_frame == 2
    alone = analyzer.analyse_frame(ancelotti(zidane))
    assert float(np.linalg.norm(sample.embedding - alone.embedding)) < 0.1


def test_no_face(analyzer):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    with pytest.raises(FaceRejected) as caught:
        analyzer.analyse_frame(noise)
    assert caught.value.reason == "no-face"
    assert analyzer.detect(np.zeros((1, 1, 3), np.uint8)) == []


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (np.zeros((0, 10, 3), np.uint8), "shape"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        ("not an image", "numpy array"),
    ],
)
def test_bad_frames_are_refused(analyzer, frame, words):
    with pytest.raises(FaceRejected) as caught:
        analyzer.detect(frame)
    assert caught.value.reason == "bad-frame" and words in caught.value.detail


def test_boxes_outside_the_frame_are_refused(analyzer, zidane):
    for box in (FaceBox(5000, 5000, 5100, 5100), FaceBox(10, 10, 10, 40), FaceBox(-50, 0, 0, 40)):
        with pytest.raises(FaceRejected) as caught:
            analyzer.landmarks68(zidane, box)
        assert caught.value.reason == "bad-frame" and "not inside" in caught.value.detail
        with pytest.raises(FaceRejected):
            analyzer.analyse(zidane, box)


def test_bad_roi_and_options(analyzer, zidane):
    with pytest.raises(ValueError, match="roi"):
        analyzer.detect(zidane, roi=(100, 100, 50, 50))
    with pytest.raises(ValueError, match="roi"):
        analyzer.detect(zidane, roi=(0, 0, float("nan"), 10))
    with pytest.raises(ValueError, match="detect_scale"):
        FaceAnalyzer(detect_scale=1.5)
    with pytest.raises(ValueError, match="jitters"):
        FaceAnalyzer(jitters=-1)


def test_rejection_reasons_are_known():
    with pytest.raises(ValueError, match="unknown rejection reason"):
        FaceRejected("ugly", "no such gate")


def test_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(FaceModelError, match="pip install dlib-bin"):
        _require("dlib")
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(FaceModelError, match="pip install face_recognition_models"):
        _require("face_recognition_models")


def test_onnx_embeddings_equal_dlibs(analyzer, zidane, bus):
    """The ONNX Runtime network gives dlib's numbers: same weights, same graph."""
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    reference = FaceAnalyzer(embedder="dlib")
    assert analyzer.embedder == "onnx"
    for image in (ancelotti(zidane), bus_man(bus), cv2.convertScaleAbs(zidane, alpha=0.7)):
        ours = analyzer.analyse_frame(image).embedding
        dlibs = reference.analyse_frame(image).embedding
        assert ours.dtype == dlibs.dtype == np.float32
        assert np.abs(ours - dlibs).max() < 1e-4


def test_embedder_options():
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    with pytest.raises(ValueError, match="embedder"):
        FaceAnalyzer(embedder="torch")
    with pytest.raises(ValueError, match="jitters"):
        FaceAnalyzer(jitters=5)
    with pytest.raises(ValueError, match="threads"):
        FaceAnalyzer(threads=0)
    assert FaceAnalyzer(embedder="dlib", jitters=2).jitters == 2


def test_model_file_problems_are_named():
    frm = pytest.importorskip(
        "face_recognition_models", reason="pip install face_recognition_models"
    )
    from companion.identity.resnet_onnx import ResnetFileError, read_weights

    data = Path(frm.face_recognition_model_location()).read_bytes()
    weights = read_weights(data)
    assert len(weights.convs) == 29 and weights.projection.shape == (256, 128)
    assert weights.mean == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    with pytest.raises(ResnetFileError, match="not dlib's face recognition network"):
        read_weights(b"\x89PNG" + data[4:])
    with pytest.raises(ResnetFileError):
        read_weights(data[: len(data) // 2])
    cut = data.replace(b"\x01\x05con_4", b"\x01\x05xxx_4", 1)
    with pytest.raises(ResnetFileError, match="28 convolutions"):
        read_weights(cut)
