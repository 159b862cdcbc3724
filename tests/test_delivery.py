"""The delivery state machine against the built-in vehicle: the whole flight, and each abort
path (arming refused, low battery, the pilot taking over, link loss) ending safely with its
reason recorded in the journal and on the bus."""

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
from firmware_bridge.dialect import mavutil
from firmware_bridge.vehicle import Vehicle
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


def _fly(
    server: VehicleServer,
    journal: Journal,
    *,
    distance_m: float = 200.0,
    on_event: Callable[[MissionEvent, Vehicle], None] | None = None,
    **plan_options: float,
) -> tuple[str, list[MissionEvent]]:
    bus = Bus()
    events: list[MissionEvent] = []
    lat, lon = offset(DEFAULT_HOME[0], DEFAULT_HOME[1], distance_m, 45.0)
    vehicle = Vehicle.connect(
        f"tcp:127.0.0.1:{server.port}", publish=bus.publish, heartbeat_interval_s=HEARTBEAT_S
    )
    bus.subscribe(MissionEvent, events.append)
    if on_event is not None:
        bus.subscribe(MissionEvent, lambda e: on_event(e, vehicle))
    plan = DeliveryPlan("test-1", lat, lon, **plan_options)
    try:
        outcome = DeliveryMission(vehicle, plan, journal, bus.publish).run()
    finally:
        vehicle.close()
    return outcome, events


def test_a_short_delivery_is_delivered_and_journaled(journal: Journal) -> None:
    with VehicleServer(DEFAULT_HOME, speedup=25.0, port=0) as server:
        outcome, events = _fly(server, journal, distance_m=80.0, cruise_alt_m=15.0)
        assert server.state.gripper_released
    assert outcome == "delivered"
    entered = [e.phase for e in events if e.event == "enter"]
    assert entered == [
        Phase.PREFLIGHT, Phase.ARM, Phase.TAKEOFF, Phase.CRUISE, Phase.DESCEND,
        Phase.RELEASE, Phase.CLIMB, Phase.RETURN, Phase.LAND, Phase.DONE,
    ]  # fmt: skip
    assert journal.outcome("test-1") == "delivered"
    assert "test-1" not in journal.unfinished()
    times = [e.boot_time_s for e in events if e.event == "enter"]
    assert all(t is not None for t in times)
    assert times == sorted(times)


def test_arming_refused_aborts_on_the_ground_with_the_reason(journal: Journal) -> None:
    with VehicleServer(DEFAULT_HOME, speedup=25.0, port=0, ready_delay_s=1e6) as server:
        outcome, events = _fly(server, journal, preflight_timeout_s=2.0)
        assert not server.state.armed
    assert outcome.startswith("not ready to fly")
    assert [e for e in events if e.event == "abort"]
    assert journal.outcome("test-1") == outcome


def test_low_battery_aborts_to_rtl(journal: Journal) -> None:
    with VehicleServer(DEFAULT_HOME, speedup=25.0, port=0) as server:
        outcome, events = _fly(server, journal, distance_m=600.0, min_battery_pct=80.0)
        assert not server.state.armed
        assert server.state.alt_rel_m < 1.0
    assert outcome.startswith("battery low")
    abort = next(e for e in events if e.event == "abort")
    assert abort.detail["action"] in ("RTL", "LAND")


def test_pilot_taking_over_stops_the_companion(journal: Journal) -> None:
    def take_over(event: MissionEvent, vehicle: Vehicle) -> None:
        if event.phase is Phase.CRUISE and event.event == "enter":
            threading.Thread(target=_pilot_switches_to_loiter, args=(server.port,)).start()

    with VehicleServer(DEFAULT_HOME, speedup=10.0, port=0) as server:
        outcome, _ = _fly(
            server, journal, distance_m=400.0, on_event=take_over, phase_timeout_s=60.0
        )
        assert server.state.mode == "LOITER"
        assert server.state.armed  # the companion does not fight the pilot
    assert outcome == "mode changed to LOITER outside the companion's control"


def _pilot_switches_to_loiter(port: int) -> None:
    """A ground station on a second link switches to LOITER, as a pilot would."""
    gcs = mavutil.mavlink_connection(f"tcp:127.0.0.1:{port}", source_system=255)
    try:
        gcs.wait_heartbeat(timeout=5)
        gcs.set_mode("LOITER")
    finally:
        gcs.close()


def test_link_loss_leaves_the_return_to_the_autopilot(journal: Journal) -> None:
    def cut_then_restore(event: MissionEvent, vehicle: Vehicle) -> None:
        if event.phase is Phase.CRUISE and event.event == "enter":
            server.set_link_blocked(True)
        if event.event == "abort":
            server.set_link_blocked(False)

    with VehicleServer(DEFAULT_HOME, speedup=25.0, port=0) as server:
        outcome, events = _fly(
            server, journal, distance_m=600.0, on_event=cut_then_restore, link_loss_grace_s=1.0
        )
        assert not server.state.armed
        assert server.state.alt_rel_m < 1.0
    assert outcome.startswith("link to the autopilot lost")
    abort = next(e for e in events if e.event == "abort")
    assert abort.detail["action"] == "FAILSAFE"
    assert [e.event for e in events][-2:] == ["abort", "landed"]
