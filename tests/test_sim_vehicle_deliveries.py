"""The built-in vehicle flies whole deliveries as ArduCopter SITL does, not only the one it was
calibrated on: every flying phase within 10 % of SITL's, for deliveries of other distances,
bearings and cruise altitudes.

The reference figures (tests/data/sitl_reference_deliveries.json) are SITL's own: each delivery
was flown by hand on real ArduCopter SITL with the shipped parameters and this repository's
MissionRunner, and its phases timed on SITL's clock. Nothing in that file comes from the
built-in vehicle, so a regression of the emulator anywhere in these flights (climbing below or
above RTL_ALT, short and long legs, any heading) shows up here even when the calibration
flight of test_sim_vehicle.py still passes.

Each plan is flown again here, on the built-in vehicle with the same parameters, runner and
telemetry rates, in lockstep, and timed as SITL's were: from the MissionEvent transitions, in
the vehicle's own clock (boot_time_s), so no outcome depends on how fast the machine is.
HEARTBEAT comes at 20 Hz on both: at ArduPilot's default 1 Hz, being armed (the start of the
takeoff) and disarmed (the end of the landing) would be seen up to 1 s late, depending on
where the heartbeat falls rather than on how the vehicle flies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from companion.bus import Bus
from companion.config import FlightConfig
from companion.geo import offset
from companion.mission.events import FLYING_PHASES
from companion.mission.journal import Journal
from companion.mission.plan import delivery_plan
from companion.mission.runner import MissionRunner
from companion.report import FlightRecorder
from firmware_bridge.dialect import mavlink
from firmware_bridge.vehicle import DEFAULT_STREAMS, Vehicle
from sim.harness.lockstep import Lockstep
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S

REFERENCE = json.loads(
    (Path(__file__).parent / "data" / "sitl_reference_deliveries.json").read_text()
)
FLIGHTS: list[dict[str, Any]] = REFERENCE["flights"]
TOLERANCE = 0.10
#: Lockstep keeps the outcome independent of the speed-up and of the machine's load.
SPEEDUP = 40.0
#: How far (vehicle seconds) the vehicle may run ahead of the mission. At SITL's speed-up 5
#: the companion answered within 10-20 ms of wall time, 0.05-0.1 s of SITL's clock; the
#: lockstep default of 0.25 s would add up to 8 % to the 3 s release hold, which starts when
#: the gripper's acknowledgement is back.
MAX_LEAD_S = 0.1
PHASES = [p.value for p in FLYING_PHASES]
#: The telemetry SITL's reference flights were flown with (see the data file's provenance).
STREAMS = {
    **DEFAULT_STREAMS,
    mavlink.MAVLINK_MSG_ID_HEARTBEAT: 20.0,
    mavlink.MAVLINK_MSG_ID_GLOBAL_POSITION_INT: 20.0,
}


@dataclass(frozen=True)
class Flown:
    """What the built-in vehicle did with one reference plan."""

    outcome: str
    phases_s: dict[str, float]
    total_s: float


def fly_on_builtin(flight: dict[str, Any], journal: Path) -> Flown:
    """Fly `flight`'s plan on the built-in vehicle (shipped parameters, no camera) as the
    reference was flown on SITL: the same plan, runner and phase timing."""
    drop = offset(*DEFAULT_HOME[:2], flight["distance_m"], flight["bearing_deg"])
    plan = delivery_plan(flight["name"], drop, FlightConfig(cruise_alt_m=flight["cruise_alt_m"]))
    recorder = FlightRecorder()
    with VehicleServer(DEFAULT_HOME, speedup=SPEEDUP, port=0) as srv:
        bus = Bus()
        recorder.attach(bus)
        vehicle = Vehicle.connect(
            f"tcp:127.0.0.1:{srv.port}",
            publish=bus.publish,
            heartbeat_interval_s=HEARTBEAT_S,
            streams=STREAMS,
            clock=lambda: srv.sim_time,
        )
        log = Journal(journal)
        runner = MissionRunner(vehicle, log, bus)
        srv.set_step_gate(Lockstep(srv, runner, max_lead_s=MAX_LEAD_S).gate)
        try:
            outcome = runner.run(plan)
        finally:
            srv.set_step_gate(None)
            vehicle.close()
            log.close()
    phases: dict[str, float] = {}
    for span in recorder.phases:
        if span.name in PHASES:
            assert span.duration_s is not None, f"{flight['name']}: {span.name} not timed"
            phases[span.name] = span.duration_s
    return Flown(outcome, phases, sum(phases.values()))


@pytest.fixture(scope="module", params=FLIGHTS, ids=[f["name"] for f in FLIGHTS])
def flown(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Flown]:
    """One reference flight and the built-in vehicle's flight of the same plan (flown once,
    shared by the checks of that flight)."""
    flight = request.param
    journal = tmp_path_factory.mktemp(flight["name"]) / "journal.db"
    return flight, fly_on_builtin(flight, journal)


def test_every_reference_flight_times_every_flying_phase() -> None:
    assert len({(f["distance_m"], f["bearing_deg"], f["cruise_alt_m"]) for f in FLIGHTS}) >= 4
    for flight in FLIGHTS:
        assert list(flight["phases_s"]) == PHASES, flight["name"]


def test_every_flying_phase_is_within_10_percent_of_sitl(
    flown: tuple[dict[str, Any], Flown],
) -> None:
    flight, builtin = flown
    assert builtin.outcome == "delivered"
    off = {
        phase: f"{builtin.phases_s[phase]:.1f} s on the built-in vehicle, {sitl:.1f} s on SITL"
        for phase, sitl in flight["phases_s"].items()
        if builtin.phases_s[phase] != pytest.approx(sitl, rel=TOLERANCE)
    }
    assert not off, f"{flight['name']}: phases more than 10 % off SITL's: {off}"


def test_takeoff_to_disarm_is_within_10_percent_of_sitl(
    flown: tuple[dict[str, Any], Flown],
) -> None:
    flight, builtin = flown
    assert builtin.total_s == pytest.approx(flight["total_s"], rel=TOLERANCE), flight["name"]
