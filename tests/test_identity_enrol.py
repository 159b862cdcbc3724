"""Enrolment from photos: one row per photo with exactly one usable face; every bad photo
(no face, several faces, a gate, a file that is missing, empty, corrupt, cut short or not
a file) an EnrolmentError naming the file and the reason."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.identity.enrol import MAX_PHOTOS, EnrolmentError, enrol_template
from companion.identity.photos import PhotoError, decode_photo, read_photo
from tests.face_images import ancelotti, bus_man, side_by_side


def _write(path: Path, image: np.ndarray, ext: str = ".jpg") -> Path:
    path = path.with_suffix(ext)
    ok, data = cv2.imencode(ext, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture
def ancelotti_jpg(tmp_path: Path, zidane) -> Path:
    return _write(tmp_path / "ancelotti", ancelotti(zidane))


def test_one_photo_one_row(analyzer, ancelotti_jpg, zidane):
    template = enrol_template([ancelotti_jpg], analyzer)
    assert template.shape == (1, 128) and template.dtype == np.float32
    direct = analyzer.analyse_frame(ancelotti(zidane)).embedding
    assert float(np.linalg.norm(template[0] - direct)) < 0.1  # JPEG round trip


def test_several_photos_in_order(analyzer, tmp_path, ancelotti_jpg, bus):
    other = _write(tmp_path / "other", bus_man(bus), ".png")
    template = enrol_template([ancelotti_jpg, other, ancelotti_jpg], analyzer)
    assert template.shape == (3, 128)
    assert np.array_equal(template[0], template[2])
    assert float(np.linalg.norm(template[0] - template[1])) > 0.7


def test_default_analyzer_is_used(ancelotti_jpg):
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    assert enrol_template([str(ancelotti_jpg)]).shape == (1, 128)


def _refused(paths, analyzer) -> EnrolmentError:
    with pytest.raises(EnrolmentError) as caught:
        enrol_template(paths, analyzer)
    return caught.value


def test_several_faces_refused(analyzer, tmp_path, zidane, bus):
    photo = _write(tmp_path / "two", side_by_side(ancelotti(zidane), bus_man(bus)))
    error = _refused([photo], analyzer)
    assert error.reason == "several-faces"
    assert str(photo) in str(error) and "2 faces found" in str(error)


def test_no_face_refused(analyzer, tmp_path):
    ys, xs = np.mgrid[0:480, 0:640]
    gradient = np.dstack([xs % 256, ys % 256, (xs + ys) % 256]).astype(np.uint8)
    photo = _write(tmp_path / "gradient", gradient, ".png")
    error = _refused([photo], analyzer)
    assert error.reason == "no-face" and str(photo) in str(error)


def test_gates_refuse_at_enrolment(analyzer, tmp_path, zidane):
    blurred = _write(tmp_path / "blurred", cv2.GaussianBlur(ancelotti(zidane), (0, 0), 1.5))
    assert _refused([blurred], analyzer).reason == "blurred"


def test_the_first_bad_photo_is_named(analyzer, tmp_path, ancelotti_jpg):
    missing = tmp_path / "missing.jpg"
    error = _refused([ancelotti_jpg, missing], analyzer)
    assert error.path == str(missing) and error.reason == "unreadable"
    assert error.detail == "no such file"


def _truncated_jpeg(path: Path, image: np.ndarray) -> Path:
    data = cv2.imencode(".jpg", image)[1].tobytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda p, _: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p, _: p.write_bytes(bytes(range(256)) * 8), "not a decodable image"),
        (lambda p, img: _truncated_jpeg(p, img), "truncated JPEG"),
        (lambda p, _: p.mkdir(), "not a regular file"),
        (lambda p, _: None, "no such file"),
    ],
    ids=["zero-size", "corrupt", "truncated", "directory", "missing"],
)
def test_bad_files_are_unreadable_with_the_cause(analyzer, tmp_path, zidane, make, cause):
    path = tmp_path / "photo.jpg"
    make(path, ancelotti(zidane))
    error = _refused([path], analyzer)
    assert error.reason == "unreadable" and cause in error.detail
    assert str(path) in str(error)


def test_truncated_png(tmp_path, zidane):
    data = cv2.imencode(".png", ancelotti(zidane))[1].tobytes()
    (tmp_path / "cut.png").write_bytes(data[:-100])
    with pytest.raises(PhotoError, match="truncated PNG"):
        read_photo(tmp_path / "cut.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_permissions(analyzer, tmp_path, ancelotti_jpg):
    ancelotti_jpg.chmod(0)
    error = _refused([ancelotti_jpg], analyzer)
    assert error.reason == "unreadable" and "cannot read" in error.detail


def test_unreadable_fifo(analyzer, tmp_path):
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)
    assert _refused([fifo], analyzer).detail == "not a regular file"


def test_photo_count_limits(analyzer, ancelotti_jpg):
    assert _refused([], analyzer).reason == "no-photos"
    assert _refused([ancelotti_jpg] * (MAX_PHOTOS + 1), analyzer).reason == "too-many-photos"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_decoding_hostile_bytes_never_crashes(data):
    try:
        image = decode_photo(data)
    except PhotoError as exc:
        assert exc.cause
    else:
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8


_SMALL_JPEG = cv2.imencode(".jpg", np.full((32, 32, 3), 90, np.uint8))[1].tobytes()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_SMALL_JPEG) - 1), st.integers(0, 255)), max_size=8))
def test_mutated_jpegs_decode_or_are_refused(edits):
    data = bytearray(_SMALL_JPEG)
    for index, value in edits:
        data[index] = value
    try:
        image = decode_photo(bytes(data))
    except PhotoError as exc:
        assert exc.cause
    else:
        assert image.dtype == np.uint8 and image.size > 0
