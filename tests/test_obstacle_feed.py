"""OBSTACLE_DISTANCE to the autopilot: the message's fields, the feed's rate and staleness
rule, and the built-in vehicle receiving it over the real link."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from companion.vision.detector import Detection
from companion.vision.obstacles import CameraGeometry, ObstacleMapper
from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import LinkError
from firmware_bridge.obstacle_feed import ObstacleFeed, obstacle_distance_message
from firmware_bridge.vehicle import Vehicle
from tests.mavtools import OWN, over_the_wire

CAM = CameraGeometry(640, 480, 60.0)


def summary(t: float = 0.0):
    f = CAM.focal_px
    person = Detection((300.0, 240 - f * 0.85 / 6, 310.0, 240 + f * 0.85 / 6), 0.9, 0, "person")
    return ObstacleMapper(CAM).summarize([person], t)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent = []
        self.fail = fail

    def send(self, msg) -> None:
        if self.fail:
            raise LinkError("tcp:127.0.0.1:5760: link is not open")
        self.sent.append(msg)


def test_message_fields_survive_the_wire():
    s = summary(t=3.25)
    msg = over_the_wire(obstacle_distance_message(s), OWN)
    assert msg.get_type() == "OBSTACLE_DISTANCE"
    assert list(msg.distances) == list(s.sectors)
    assert msg.distances[0] == 600  # the person straight ahead at 6 m
    assert msg.distances[36] == 65535  # behind: unknown
    assert msg.time_usec == 3_250_000
    assert msg.sensor_type == mavlink.MAV_DISTANCE_SENSOR_UNKNOWN
    assert msg.frame == mavlink.MAV_FRAME_BODY_FRD
    assert (msg.increment, msg.increment_f, msg.angle_offset) == (5, 5.0, 0.0)
    assert (msg.min_distance, msg.max_distance) == (20, 4000)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sectors": (1,) * 71}, "72 sectors"),
        ({"sectors": (70000,) * 72}, "0..65535"),
        ({"increment_deg": 0}, "increment"),
        ({"min_distance_cm": 500, "max_distance_cm": 100}, "min_distance"),
    ],
)
def test_malformed_summaries_are_refused(change, words):
    with pytest.raises(ValueError, match=words):
        obstacle_distance_message(replace(summary(), **change))


def test_feed_sends_fresh_summaries_only_and_counts():
    now = [100.0]
    sender = Recorder()
    feed = ObstacleFeed(sender, clock=lambda: now[0], stale_after_s=1.0)
    assert not feed.send_once()  # nothing yet
    feed.update(summary(t=99.5))
    assert feed.send_once()
    now[0] = 101.0  # the summary is 1.5 s old: the camera stopped
    assert not feed.send_once()
    feed(summary(t=100.9))  # a bus callback
    assert feed.send_once()
    assert [m.time_usec for m in sender.sent] == [99_500_000, 100_900_000]
    assert feed.stats.sent == 2 and feed.stats.skipped == 2 and feed.stats.errors == 0


def test_feed_counts_link_errors_without_raising():
    feed = ObstacleFeed(Recorder(fail=True), clock=lambda: 0.0)
    feed.update(summary())
    assert not feed.send_once()
    assert feed.stats.errors == 1 and "not open" in feed.stats.last_error


def test_feed_thread_sends_at_its_rate():
    sender = Recorder()
    feed = ObstacleFeed(sender, rate_hz=50.0, stale_after_s=60.0)
    feed.update(summary(t=time.monotonic()))
    with feed:
        deadline = time.monotonic() + 5.0
        while len(sender.sent) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(sender.sent) >= 5
    count = len(sender.sent)
    time.sleep(0.1)
    assert len(sender.sent) == count  # stopped


def test_builtin_vehicle_receives_obstacle_distance(builtin_autopilot):
    server = builtin_autopilot.server
    received = []
    got = threading.Event()
    copter = server._copter
    original = copter.handle

    def handle(msg, client):
        if msg.get_type() == "OBSTACLE_DISTANCE":
            received.append(msg)
            if len(received) >= 3:
                got.set()
        original(msg, client)

    copter.handle = handle
    vehicle = Vehicle.connect(builtin_autopilot.connection, connect_timeout_s=20.0)
    try:
        feed = ObstacleFeed(vehicle, rate_hz=20.0)
        feed.update(summary(t=time.monotonic()))
        with feed:
            assert got.wait(10.0), f"vehicle received {len(received)} OBSTACLE_DISTANCE"
        assert vehicle.link.up  # the vehicle ignored nothing fatal: the link stays up
    finally:
        vehicle.close()
    msg = received[0]
    assert msg.get_srcComponent() == mavlink.MAV_COMP_ID_ONBOARD_COMPUTER
    assert msg.distances[0] == 600 and msg.distances[36] == 65535
    assert msg.frame == mavlink.MAV_FRAME_BODY_FRD and msg.increment == 5
    assert feed.stats.sent >= 3 and feed.stats.errors == 0
