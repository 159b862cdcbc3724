"""Obstacle geometry: bearing from the pixel column (pinhole), range from size priors or a
depth source, the 72-sector OBSTACLE_DISTANCE packing (UINT16_MAX outside the view), and the
descent-cone guard's hold and resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.vision import obstacles as ob
from companion.vision.descent_guard import DescentGuard, cone_intrusions
from companion.vision.detector import Detection
from companion.vision.obstacles import (
    SECTORS,
    UINT16_MAX,
    CameraGeometry,
    ObstacleMapper,
    SizePrior,
    locate,
    obstacle_distance_fields,
    pack_sectors,
    range_from_prior,
    sectors_in_view,
)
from firmware_bridge.dialect import mavlink

CAM = CameraGeometry(width=640, height=480, hfov_deg=60.0)


def det(box, name="person", score=0.9, class_id=0):
    return Detection(tuple(float(v) for v in box), score, class_id, name)


def person_at(geometry: CameraGeometry, bearing_deg: float, range_m: float) -> Detection:
    """A whole person box of the right size at that bearing and range."""
    f = geometry.focal_px
    u = geometry.width / 2 + f * math.tan(math.radians(bearing_deg - geometry.yaw_deg))
    h = f * 1.7 / range_m
    w = f * 0.45 / range_m / 1.5  # narrower than the prior: the height estimate is nearer
    v = geometry.height / 2
    return det((u - w / 2, v - h / 2, u + w / 2, v + h / 2))


def test_mavlink_constants_match_the_dialect():
    assert ob.MAV_FRAME_BODY_FRD == mavlink.MAV_FRAME_BODY_FRD
    assert ob.MAV_DISTANCE_SENSOR_UNKNOWN == mavlink.MAV_DISTANCE_SENSOR_UNKNOWN
    cls = mavlink.MAVLink_obstacle_distance_message
    lengths = dict(zip(cls.ordered_fieldnames, cls.array_lengths, strict=True))
    assert lengths["distances"] == SECTORS == 72


def test_bearing_from_pixel_column():
    assert CAM.bearing_deg(320) == pytest.approx(0.0)
    assert CAM.bearing_deg(0) == pytest.approx(-30.0)
    assert CAM.bearing_deg(640) == pytest.approx(30.0)
    f = CAM.focal_px
    assert f == pytest.approx(320 / math.tan(math.radians(30)))
    assert CAM.bearing_deg(320 + f * math.tan(math.radians(20))) == pytest.approx(20.0)
    right = CameraGeometry(640, 480, 60.0, yaw_deg=90.0)
    assert right.bearing_deg(320) == pytest.approx(90.0)
    rear = CameraGeometry(640, 480, 60.0, yaw_deg=180.0)
    assert rear.bearing_deg(640) == pytest.approx(-150.0)  # wrapped to -180..180
    assert CAM.vfov_deg == pytest.approx(math.degrees(2 * math.atan(240 / f)))


def test_range_from_size_priors():
    f = CAM.focal_px
    prior = SizePrior(1.7, 0.45)
    h = f * 1.7 / 10.0
    whole = (300, 240 - h / 2, 300 + f * 0.45 / 20.0, 240 + h / 2)  # narrow: height wins
    assert range_from_prior(whole, prior, CAM) == pytest.approx(10.0)
    # Cut at the bottom edge: its height is too small; the width tells the range.
    cut = (300, 200, 300 + f * 0.45 / 3.0, 480)
    assert range_from_prior(cut, prior, CAM) == pytest.approx(3.0)
    # Both whole: the nearer estimate is kept (a crouching person).
    crouch = (300, 200, 300 + f * 0.45 / 4.0, 200 + f * 1.7 / 6.0)
    assert range_from_prior(crouch, prior, CAM) == pytest.approx(4.0)
    assert range_from_prior((10, 10, 10, 10), prior, CAM) is None
    car = range_from_prior(
        (100, 100, 100 + f * 1.75 / 20, 100 + f * 1.5 / 20), ob.SIZE_PRIORS["car"], CAM
    )
    assert car == pytest.approx(20.0)


def test_locate_uses_depth_when_it_answers_and_priors_otherwise():
    person = person_at(CAM, 10.0, 8.0)
    cup = det((100, 100, 120, 130), "cup", class_id=41)
    found = locate([person, cup], CAM)
    assert [o.class_name for o in found] == ["person"]  # no prior for a cup
    assert found[0].range_m == pytest.approx(8.0, rel=1e-3)
    assert found[0].bearing_deg == pytest.approx(10.0, abs=1e-6)
    assert found[0].range_from == "prior"

    def depth(d, _geometry):
        return 2.5 if d.class_name == "cup" else None

    found = locate([person, cup], CAM, depth=depth)
    assert [(o.class_name, o.range_from) for o in found] == [("cup", "depth"), ("person", "prior")]

    def broken(_d, _g):
        raise RuntimeError("depth camera unplugged")

    assert locate([person], CAM, depth=broken)[0].range_from == "prior"


def test_sectors_cover_the_field_of_view_only():
    view = sectors_in_view(CAM)
    assert view == [*range(0, 7), *range(66, 72)]  # -30..+30 deg, 13 sectors
    sectors = pack_sectors([], CAM, 20, 4000)
    assert len(sectors) == 72
    assert all(sectors[i] == 4001 for i in view)  # seen and clear: max_distance + 1
    assert all(sectors[i] == UINT16_MAX for i in range(72) if i not in view)
    rear = sectors_in_view(CameraGeometry(640, 480, 60.0, yaw_deg=180.0))
    assert rear == list(range(30, 43))


def test_obstacles_fill_the_sectors_they_span():
    narrow = person_at(CAM, 10.0, 8.0)  # about 5 deg wide at 8 m
    sectors = pack_sectors(locate([narrow], CAM), CAM, 20, 4000)
    assert sectors[2] == 800
    assert sectors[0] == 4001 and sectors[4] == 4001
    # A car across the centre, 12 m away (by its height), spanning -4..+4 degrees.
    f = CAM.focal_px
    x1, x2 = 320 - f * math.tan(math.radians(4)), 320 + f * math.tan(math.radians(4))
    car = det((x1, 200, x2, 200 + f * 1.5 / 12.0), "car", class_id=2)
    sectors = pack_sectors(locate([car, narrow], CAM), CAM, 20, 4000)
    assert sectors[71] == sectors[0] == sectors[1] == 1200
    assert sectors[2] == 800  # the nearer object wins its sector
    assert sectors[70] == 4001 and sectors[3] == 4001
    # Seen from its side, the width prior (a car's front) says nearer: that is kept.
    x1, x2 = 320 - f * math.tan(math.radians(8)), 320 + f * math.tan(math.radians(8))
    side = det((x1, 200, x2, 200 + f * 1.5 / 12.0), "car", class_id=2)
    assert locate([side], CAM)[0].range_m < 12.0


def test_ranges_are_clamped_to_the_sensor_limits():
    near = person_at(CAM, 0.0, 0.1)
    far = person_at(CAM, -20.0, 60.0)
    assert pack_sectors(locate([near], CAM), CAM, 50, 4000)[0] == 50  # clamped up to min
    sectors = pack_sectors(locate([far], CAM), CAM, 50, 4000)
    assert sectors[68] == 4001  # beyond max_distance: nothing there within range


def test_summary_for_the_bus_and_the_mavlink_fields():
    mapper = ObstacleMapper(CAM)
    dets = [person_at(CAM, 10.0, 8.0), person_at(CAM, -20.0, 5.0), det((0, 0, 5, 5), "cup")]
    summary = mapper.summarize(dets, t=12.5, frame_size=(640, 480), frame_index=7)
    assert summary.nearest is not None and summary.nearest.class_name == "person"
    assert summary.nearest_m == pytest.approx(5.0, rel=1e-3)
    assert summary.counts == (("person", 2), ("cup", 1))
    assert summary.count("person") == 2 and summary.count("dog") == 0
    with pytest.raises(AttributeError):
        summary.t = 0.0  # frozen: safe on the bus
    fields = obstacle_distance_fields(summary, time_usec=12_500_000)
    msg = mavlink.MAVLink_obstacle_distance_message(**fields)
    wire = mavlink.MAVLink(None, srcSystem=1, srcComponent=191)
    back = mavlink.MAVLink(None).decode(bytearray(msg.pack(wire)))
    assert list(back.distances) == list(summary.sectors)
    assert back.increment == 5 and back.increment_f == 5.0 and back.angle_offset == 0.0
    assert back.frame == mavlink.MAV_FRAME_BODY_FRD
    assert (back.min_distance, back.max_distance) == (20, 4000)


def test_frames_of_another_size_are_rescaled():
    mapper = ObstacleMapper(CameraGeometry(640, 480, 60.0))
    big = CameraGeometry(1280, 960, 60.0)
    summary = mapper.summarize([person_at(big, 10.0, 8.0)], 0.0, frame_size=(1280, 960))
    assert summary.nearest_m == pytest.approx(8.0, rel=1e-3)
    assert summary.sectors[2] == 800


boxes = st.tuples(*[st.floats(allow_nan=True, allow_infinity=True, width=32)] * 4)
names = st.sampled_from(["person", "car", "dog", "bus", "cup", "bicycle", "bird"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(boxes, names, st.floats(0, 1)), max_size=8),
    st.floats(5.0, 175.0),
    st.floats(-180.0, 180.0),
    st.integers(0, 500),
    st.integers(600, 30000),
)
def test_arbitrary_boxes_never_raise_nor_leave_the_ranges(items, hfov, yaw, lo, hi):
    geometry = CameraGeometry(640, 480, hfov, yaw_deg=yaw)
    mapper = ObstacleMapper(geometry, min_distance_cm=lo, max_distance_cm=hi)
    dets = [det(b, n, s) for b, n, s in items]
    summary = mapper.summarize(dets, 0.0)
    view = set(sectors_in_view(geometry))
    assert len(summary.sectors) == 72
    for i, value in enumerate(summary.sectors):
        if i not in view:
            assert value == UINT16_MAX
        else:
            assert lo <= value <= hi + 1
    for o in summary.obstacles:
        assert math.isfinite(o.range_m) and o.range_m > 0
        assert -180.0 <= o.bearing_deg < 180.0
    mavlink.MAVLink_obstacle_distance_message(**obstacle_distance_fields(summary, 0)).pack(
        mavlink.MAVLink(None)
    )


# -- the descent cone ---------------------------------------------------------------------

DOWN = CameraGeometry(640, 480, 70.0, pitch_down_deg=90.0)


def state_at(alt):
    return SimpleNamespace(position=SimpleNamespace(alt_rel_m=alt))


def box_at_angle(geometry, angle_deg, size=40):
    """A box whose nearest point to the nadir is `angle_deg` off vertical, to the right."""
    u = geometry.width / 2 + geometry.focal_px * math.tan(math.radians(angle_deg))
    return (u, 220, u + size, 260)


def test_downward_camera_geometry():
    assert DOWN.ray_body(320, 240) == pytest.approx((0.0, 0.0, 1.0))
    assert DOWN.off_vertical_deg(320, 240) == pytest.approx(0.0)
    fwd, right, down = DOWN.ray_body(320, 0)  # image top: towards the nose
    assert fwd > 0 and right == pytest.approx(0.0) and down > 0
    assert DOWN.nadir_pixel() == pytest.approx((320.0, 240.0))
    assert CAM.nadir_pixel() is None
    tilted = CameraGeometry(640, 480, 70.0, pitch_down_deg=45.0)
    assert tilted.off_vertical_deg(320, 240) == pytest.approx(45.0)


def test_cone_intrusions_by_class_and_angle():
    inside = det(box_at_angle(DOWN, 20))
    outside = det(box_at_angle(DOWN, 33))
    dog = det((300, 220, 340, 260), "dog", class_id=16)
    found = cone_intrusions([inside, outside, dog], DOWN, 30.0)
    assert [(f.class_name, round(f.off_vertical_deg)) for f in found] == [("person", 20)]
    covering = det((0, 0, 640, 480))  # a box over the nadir is at 0 deg
    assert cone_intrusions([covering], DOWN, 5.0)[0].off_vertical_deg == pytest.approx(0.0)
    assert cone_intrusions([det((math.nan, 0, 1, 1))], DOWN, 30.0) == []


def test_guard_holds_and_resumes_after_the_clear_time():
    guard = DescentGuard(DOWN, half_angle_deg=30.0, clear_time_s=2.0)
    person = det(box_at_angle(DOWN, 10))
    assert guard.reason is None
    guard.update([person], (640, 480), t=10.0)
    reason = guard.reason
    assert reason is not None and "person inside the descent cone" in reason
    guard.update([], (640, 480), t=11.0)
    guard.update([], (640, 480), t=12.5)
    assert guard.reason is not None  # clear for 1.5 s only
    guard.update([person], (640, 480), t=12.6)  # back again: the clear time restarts
    guard.update([], (640, 480), t=13.0)
    guard.update([], (640, 480), t=14.9)
    assert guard.holding
    guard.update([], (640, 480), t=15.0)
    assert guard.reason is None
    assert guard.holds == 1 and guard.frames == 7


def test_guard_without_frames_does_not_resume():
    guard = DescentGuard(DOWN, clear_time_s=0.5)
    guard.update([det(box_at_angle(DOWN, 5), "car", class_id=2)], None, t=0.0)
    assert "car" in guard.reason
    # No frame since (camera dead): still holding, time alone does not clear it.
    assert guard.reason is not None
    with pytest.raises(ValueError):
        DescentGuard(DOWN, half_angle_deg=95.0)
