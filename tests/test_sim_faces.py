"""The simulator's face synthesiser (sim/faces.py): sequences from a still photo, the warps
that shut the eyes and open the mouth, and its clear errors. Whether the liveness check
passes or refuses what it makes is tested in test_identity_liveness.py."""

from __future__ import annotations

import io
import itertools
import re
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from sim.faces import (
    KINDS,
    PHOTO_MEMBER,
    PHOTO_SDIST,
    FaceSynthError,
    FaceSynthesiser,
    face_landmarks,
    fetch_face_photo,
    load_face_still,
    portrait_still,
)


@pytest.fixture(scope="module")
def synth() -> FaceSynthesiser:
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    pytest.importorskip("face_recognition_models", reason="pip install face_recognition_models")
    try:
        return FaceSynthesiser(portrait_still())
    except FaceSynthError as exc:
        pytest.skip(f"no portrait photo: {exc}")


def ear(points: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (computed here, not with the companion's code)."""

    def one(eye: np.ndarray) -> float:
        vertical = np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])
        return float(vertical / (2 * np.linalg.norm(eye[0] - eye[3])))

    return (one(points[36:42]) + one(points[42:48])) / 2


def changed(a: np.ndarray, b: np.ndarray, level: int = 24) -> np.ndarray:
    """Pixels (y, x) where two images differ by more than `level` in some channel."""
    return np.argwhere(np.abs(a.astype(int) - b.astype(int)).max(axis=2) > level)


@pytest.mark.parametrize("kind", KINDS)
def test_a_sequence_has_the_frames_and_times_asked_for(synth, kind) -> None:
    frames = synth.sequence(kind, fps=5.0, seconds=1.0)
    assert [f.t for f in frames] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    for frame in frames:
        assert frame.image.shape == synth.still.shape and frame.image.dtype == np.uint8


def test_a_still_repeats_and_the_replays_move(synth) -> None:
    still = synth.sequence("still", seconds=0.5)
    assert all(np.array_equal(f.image, synth.still) for f in still)
    jitter = synth.sequence("jitter", seconds=0.5)
    assert all(len(changed(a.image, b.image)) > 500 for a, b in itertools.pairwise(jitter))
    light = synth.sequence("brightness", seconds=0.5)
    assert len({round(float(f.image.mean())) for f in light}) > 1
    loop = synth.sequence("loop", seconds=1.0)
    assert all(np.array_equal(loop[i].image, loop[i + 4].image) for i in range(6))
    assert not np.array_equal(loop[0].image, loop[1].image)


def test_sequences_depend_only_on_the_seed(synth) -> None:
    a, b = synth.sequence("jitter", seed=3), synth.sequence("jitter", seed=3)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    c = synth.sequence("jitter", seed=4)
    assert not np.array_equal(a[0].image, c[0].image)


def test_a_blink_shuts_the_eyes_and_nothing_else(synth) -> None:
    """Only the eyes and the lid skin between them and the brows change."""
    shut = synth.render(closure=1.0)
    where = changed(shut, synth.still)
    assert len(where) > 100
    brows_and_eyes = np.vstack([synth.landmarks[17:27], synth.landmarks[36:48]])
    (x0, y0), (x1, y1) = brows_and_eyes.min(axis=0) - 4, brows_and_eyes.max(axis=0) + 4
    assert np.all((where[:, 1] >= x0) & (where[:, 1] <= x1))
    assert np.all((where[:, 0] >= y0) & (where[:, 0] <= y1))
    assert ear(face_landmarks(shut)) < 0.6 * ear(face_landmarks(synth.still))


def test_a_mouth_opening_moves_only_the_lower_face(synth) -> None:
    wide = synth.render(opening=1.0)
    where = changed(wide, synth.still)
    assert len(where) > 500
    assert np.all(where[:, 0] > synth.landmarks[30, 1])  # below the tip of the nose
    grey = lambda image: cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)  # noqa: E731
    assert (grey(wide) < 40).sum() > (grey(synth.still) < 40).sum() + 300  # a dark mouth


def test_bad_requests_are_value_errors(synth) -> None:
    with pytest.raises(ValueError, match="unknown face sequence 'wink'"):
        synth.sequence("wink")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be > 0"):
        synth.sequence("still", fps=0.0)


def test_a_photo_without_one_face_is_refused() -> None:
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    blank = np.full((200, 200, 3), 128, np.uint8)
    with pytest.raises(FaceSynthError, match="0 faces"):
        FaceSynthesiser(blank)
    with pytest.raises(FaceSynthError, match="BGR uint8"):
        FaceSynthesiser(blank.astype(np.float32))


def test_an_unreadable_photo_or_a_crop_outside_it_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    with pytest.raises(FaceSynthError, match=r"junk\.jpg: not a readable image"):
        load_face_still(junk)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((50, 60, 3), np.uint8))
    with pytest.raises(FaceSynthError, match="lies outside the 60x50 image"):
        load_face_still(small, crop=(0, 0, 100, 100))


def _sdist(folder: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(folder / PHOTO_SDIST, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_a_source_distribution_without_the_photo_is_refused(tmp_path: Path) -> None:
    _sdist(tmp_path, {"face_recognition-1.3.0/README.rst": b"readme"})
    with pytest.raises(FaceSynthError, match=re.escape(f"no {PHOTO_MEMBER} in it")):
        fetch_face_photo(tmp_path)


def test_a_photo_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    _sdist(tmp_path, {PHOTO_MEMBER: b"some other picture"})
    with pytest.raises(FaceSynthError, match="not the pinned photo"):
        fetch_face_photo(tmp_path)
    assert not (tmp_path / "obama.jpg").exists()
