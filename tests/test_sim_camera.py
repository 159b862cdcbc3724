"""The simulated downward camera: deterministic frames of the hand-over point, in which the
real detector finds the pasted person inside the descent cone while they stand there, and
nobody once they have walked off."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")

from companion.vision.descent_guard import DescentGuard
from companion.vision.detector import Detector
from models import BUILD_DIR
from models.build import build_models
from sim.camera import GEOMETRY, PersonVisit, SimCamera, SimScene
from sim.harness.vision import companion_geometry

CACHE = BUILD_DIR / "test-cache"
HANDOVER_ALT = 5.0
VISIT = PersonVisit(appear_s=2.0, stay_s=10.0, offset_m=(0.6, 0.3))


@pytest.fixture(scope="module")
def detector(sources):
    manifest = build_models(CACHE, ["fp32"], sources=sources)
    path = CACHE / manifest["variants"]["fp32"]["file"]
    return Detector(path, providers=["CPUExecutionProvider"], threads=1)


@pytest.fixture(scope="module")
def camera():
    return SimCamera(SimScene(people=(VISIT,)))


def people(detector, image):
    return [d for d in detector.detect(image) if d.class_name == "person"]


def test_frames_are_deterministic_images(camera):
    a = camera.frame(HANDOVER_ALT, 5.0)
    assert a.shape == (GEOMETRY.height, GEOMETRY.width, 3) and a.dtype == np.uint8
    assert np.array_equal(a, camera.frame(HANDOVER_ALT, 5.0))
    assert np.array_equal(a, SimCamera(SimScene(people=(VISIT,))).frame(HANDOVER_ALT, 5.0))
    assert not np.array_equal(a, camera.frame(HANDOVER_ALT, 1.0))  # before the person came
    clocked = SimCamera(SimScene(people=(VISIT,)), clock=lambda: 5.0)
    assert np.array_equal(a, clocked.frame(HANDOVER_ALT))


def test_person_positions_over_time():
    assert VISIT.position(1.0) is None
    assert VISIT.position(5.0) == pytest.approx((0.6, 0.3))
    north, east = VISIT.position(14.0)  # 2 s into walking east at 1.4 m/s
    assert north == pytest.approx(0.6) and east == pytest.approx(0.3 + 2.8)
    assert VISIT.position(100.0) is None


def test_detector_finds_the_person_in_the_cone_at_handover_then_nobody(detector, camera):
    guard = DescentGuard(companion_geometry(GEOMETRY), half_angle_deg=30.0, clear_time_s=1.0)
    before = camera.frame(HANDOVER_ALT, 1.0)
    assert people(detector, before) == []
    guard.update(detector.detect(before), (GEOMETRY.width, GEOMETRY.height), t=1.0)
    assert guard.reason is None

    standing = camera.frame(HANDOVER_ALT, 6.0)
    found = people(detector, standing)
    assert len(found) == 1 and found[0].score > 0.5
    guard.update(detector.detect(standing), (GEOMETRY.width, GEOMETRY.height), t=6.0)
    reason = guard.reason
    assert reason is not None and reason.startswith("person inside the descent cone")

    for t in (20.0, 21.5):  # walked off well out of view
        frame = camera.frame(HANDOVER_ALT, t)
        assert people(detector, frame) == []
        guard.update(detector.detect(frame), (GEOMETRY.width, GEOMETRY.height), t=t)
    assert guard.reason is None
    assert guard.holds == 1


def test_without_the_photo_a_silhouette_is_drawn(tmp_path, caplog):
    scene = SimScene(people=(VISIT,), person_image=tmp_path / "missing.jpg")
    image = SimCamera(scene).frame(HANDOVER_ALT, 6.0)
    assert image.shape == (480, 640, 3)
    assert "not found" in caplog.text
