"""The delivery state machine with an obstacle monitor during the descent and hand-over: a
reason holds the descent where it is (and keeps the parcel), its clearing resumes it, and a
cone that never clears ends the delivery with the reason once `max_hold_s` has passed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from companion.bus import Bus
from companion.geo import offset
from companion.mission.delivery import DeliveryMission, DeliveryPlan
from companion.mission.events import MissionEvent, Phase
from companion.mission.journal import Journal
from firmware_bridge.state import VehicleState
from firmware_bridge.vehicle import Vehicle
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


class ScriptedCone:
    """A fake descent-cone monitor: someone is in the cone from the first time the vehicle is
    below `below_m` for `for_s` autopilot seconds (forever when None), and, when `at_release`
    is given, again for that long once the mission is in its release phase."""

    REASON = "person inside the descent cone, 0 deg off vertical"

    def __init__(
        self,
        phase: Callable[[], Phase],
        *,
        below_m: float,
        for_s: float | None,
        at_release: float | None = None,
    ) -> None:
        self.phase = phase
        self.below_m = below_m
        self.for_s = for_s
        self.at_release = at_release
        self.descent_hold: tuple[float, float | None] | None = None
        self.release_hold: tuple[float, float] | None = None
        self.held_states: list[VehicleState] = []  # while the descent was held
        self.lock = threading.Lock()

    def hold_reason(self, state: VehicleState) -> str | None:
        now = state.boot_time_s or 0.0
        with self.lock:
            if self.phase() is Phase.RELEASE and self.at_release is not None:
                if self.release_hold is None:
                    self.release_hold = (now, now + self.at_release)
                if now < self.release_hold[1]:
                    return self.REASON
                return None
            low = state.position is not None and state.position.alt_rel_m < self.below_m
            if self.descent_hold is None and low and self.phase() is Phase.DESCEND:
                end = None if self.for_s is None else now + self.for_s
                self.descent_hold = (now, end)
            if self.descent_hold is not None:
                end = self.descent_hold[1]
                if end is None or now < end:
                    self.held_states.append(state)
                    return self.REASON
            return None


def _fly(
    server: VehicleServer,
    journal: Journal,
    make_monitor: Callable[[Callable[[], Phase]], ScriptedCone],
    **plan_options: float,
) -> tuple[str, list[MissionEvent], ScriptedCone]:
    bus = Bus()
    events: list[MissionEvent] = []
    lat, lon = offset(DEFAULT_HOME[0], DEFAULT_HOME[1], 30.0, 45.0)
    vehicle = Vehicle.connect(
        f"tcp:127.0.0.1:{server.port}", publish=bus.publish, heartbeat_interval_s=HEARTBEAT_S
    )
    bus.subscribe(MissionEvent, events.append)
    plan = DeliveryPlan("cone-1", lat, lon, cruise_alt_m=15.0, **plan_options)
    holder: dict[str, DeliveryMission] = {}
    monitor = make_monitor(lambda: holder["mission"].phase)
    mission = DeliveryMission(vehicle, plan, journal, bus.publish, obstacle_monitor=monitor)
    holder["mission"] = mission
    try:
        outcome = mission.run()
    finally:
        vehicle.close()
    return outcome, events, monitor


def test_a_person_in_the_cone_holds_the_descent_and_the_release_until_clear(
    journal: Journal,
) -> None:
    with VehicleServer(DEFAULT_HOME, speedup=25.0, port=0) as server:
        outcome, events, cone = _fly(
            server,
            journal,
            lambda phase: ScriptedCone(phase, below_m=11.0, for_s=6.0, at_release=2.0),
        )
        assert server.state.gripper_released
    assert outcome == "delivered"
    story = [(e.phase, e.event) for e in events]
    assert story[story.index((Phase.DESCEND, "enter")) :][:8] == [
        (Phase.DESCEND, "enter"),
        (Phase.DESCEND, "hold"),
        (Phase.DESCEND, "resume"),
        (Phase.RELEASE, "enter"),
        (Phase.RELEASE, "hold"),
        (Phase.RELEASE, "resume"),
        (Phase.RELEASE, "released"),
        (Phase.CLIMB, "enter"),
    ]
    hold = next(e for e in events if e.event == "hold")
    assert hold.detail["reason"] == ScriptedCone.REASON
    resumes = [e for e in events if e.event == "resume"]
    assert resumes[0].detail["held_s"] == pytest.approx(6.0, abs=0.5)
    assert resumes[1].detail["held_s"] == pytest.approx(2.0, abs=0.5)
    # The descent stopped: after braking, the vehicle stayed well above the hand-over
    # altitude (5 m) for the whole hold, instead of going on down at 1.5 m/s.
    assert cone.descent_hold is not None
    start = cone.descent_hold[0]
    held = [
        s.position.alt_rel_m
        for s in cone.held_states
        if s.position is not None and (s.boot_time_s or 0.0) > start + 1.5
    ]
    assert held and min(held) > 7.5, min(held)
    assert max(held) - min(held) < 1.5
    # Released only once the cone was clear, and the journal tells the same story.
    assert resumes[1].boot_time_s <= next(e for e in events if e.event == "released").boot_time_s
    journaled = [(r.phase, r.event) for r in journal.events("cone-1")]
    assert ("descend", "hold") in journaled and ("release", "resume") in journaled


def test_a_cone_that_never_clears_aborts_after_max_hold(journal: Journal) -> None:
    with VehicleServer(DEFAULT_HOME, speedup=25.0, port=0) as server:
        outcome, events, _ = _fly(
            server,
            journal,
            lambda phase: ScriptedCone(phase, below_m=11.0, for_s=None),
            max_hold_s=4.0,
        )
        assert not server.state.gripper_released  # the parcel stays on board
        assert not server.state.armed  # home and landed
    assert outcome.startswith("obstacle in the descent cone for 4 s (person inside"), outcome
    abort = next(e for e in events if e.event == "abort")
    assert abort.phase is Phase.ABORT and abort.detail["action"] == "RTL"
    assert [e.event for e in events][-1] == "landed"
    assert journal.outcome("cone-1") == outcome
