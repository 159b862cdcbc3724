"""The flight report: track length, phases on the vehicle clock, the ideal time, the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from companion.bus import Bus
from companion.config import Config, FlightConfig
from companion.geo import offset
from companion.mission.events import MissionEvent, Phase
from companion.report import (
    FlightRecorder,
    TrackPoint,
    build_report,
    ideal_duration_s,
    ideal_phase_durations,
    track_length_m,
    write_report,
)
from firmware_bridge.state import Battery, Position, VehicleState

HOME = (-35.363261, 149.165230)


class SyntheticFlight:
    """Publishes a straight-line delivery on a bus: states every 0.5 s of vehicle time."""

    def __init__(self, bus: Bus, distance: float = 200.0, bearing: float = 90.0) -> None:
        self.bus, self.distance, self.bearing = bus, distance, bearing
        self.t, self.d, self.alt, self.battery = 500.0, 0.0, 0.0, 100.0
        self.home = Position(HOME[0], HOME[1], 584.0, 0.0)

    def state(self) -> None:
        lat, lon = offset(*HOME, self.d, self.bearing)
        pos = Position(lat, lon, 584.0 + self.alt, self.alt)
        battery = Battery(remaining_pct=round(self.battery))
        self.bus.publish(
            VehicleState(
                wall_time=self.t / 10,
                boot_time_s=self.t,
                position=pos,
                home=self.home,
                battery=battery,
            )
        )

    def step(self, seconds: float = 0.5, dd: float = 0.0, dalt: float = 0.0) -> None:
        self.t += seconds
        self.d += dd
        self.alt += dalt
        self.battery -= 0.1
        self.state()

    def enter(self, phase: Phase, event: str = "enter") -> None:
        self.bus.publish(MissionEvent("m-1", phase, event, {}, self.t, self.t / 10))

    def fly_out(self) -> None:
        """Preflight 5 s, arm, climb to 20 m (10 s), cruise out (20 s), descend to 5 m (10 s)."""
        self.enter(Phase.PREFLIGHT)
        for _ in range(10):
            self.step()
        self.enter(Phase.ARM)
        self.step()
        self.enter(Phase.TAKEOFF)
        for _ in range(20):
            self.step(dalt=1.0)
        self.enter(Phase.CRUISE)
        for _ in range(40):
            self.step(dd=self.distance / 40)
        self.enter(Phase.DESCEND)
        for _ in range(20):
            self.step(dalt=-0.75)

    def fly_back(self) -> None:
        """Release 3 s, climb 6 s, return 20 s, land 10 s, done."""
        self.enter(Phase.RELEASE)
        for _ in range(6):
            self.step()
        self.enter(Phase.CLIMB)
        for _ in range(12):
            self.step(dalt=1.25)
        self.enter(Phase.RETURN)
        for _ in range(40):
            self.step(dd=-self.distance / 40)
        self.enter(Phase.LAND)
        for _ in range(20):
            self.step(dalt=-1.0)
        self.enter(Phase.DONE)


@pytest.fixture
def recorded() -> tuple[FlightRecorder, SyntheticFlight]:
    bus = Bus()
    recorder = FlightRecorder()
    recorder.attach(bus)
    flight = SyntheticFlight(bus)
    flight.fly_out()
    flight.fly_back()
    flight.step()  # a sample after disarm must not count
    return recorder, flight


def _report(recorder: FlightRecorder, outcome: str = "delivered") -> dict:
    drop = offset(*HOME, 200.0, 90.0)
    return build_report(
        recorder, config=Config(), mission_id="m-1", outcome=outcome, drop=drop, autopilot="test"
    )


def test_track_length_of_a_known_square() -> None:
    corners = [(0.0, 0.0), (100.0, 0.0), (100.0, 90.0), (100.0, 180.0)]
    points, here = [TrackPoint(0.0, *HOME, 10.0, None)], HOME
    for i, (dist, bearing) in enumerate(corners[1:], start=1):
        here = offset(*here, dist, bearing)
        points.append(TrackPoint(float(i), *here, 10.0, None))
    assert track_length_m(points) == pytest.approx(300.0, abs=0.01)
    assert track_length_m(points[:1]) == 0.0


def test_report_of_a_delivery(recorded: tuple[FlightRecorder, SyntheticFlight]) -> None:
    recorder, _ = recorded
    report = _report(recorder)
    assert report["outcome"] == "delivered" and report["delivered"] is True
    assert [p["name"] for p in report["phases"]] == [
        "preflight",
        "arm",
        "takeoff",
        "cruise",
        "descend",
        "release",
        "climb",
        "return",
        "land",
    ]
    by_name = {p["name"]: p for p in report["phases"]}
    assert by_name["preflight"] == {
        "name": "preflight",
        "start_s": 500.0,
        "end_s": 505.0,
        "duration_s": 5.0,
    }
    assert by_name["takeoff"]["start_s"] == 505.5
    assert by_name["takeoff"]["duration_s"] == 10.0
    assert by_name["cruise"]["duration_s"] == 20.0
    assert by_name["release"]["duration_s"] == 3.0
    assert by_name["land"]["end_s"] == 584.5
    # takeoff start (505.5) to disarm (584.5): preflight and arming are not counted
    assert report["flight_start_s"] == 505.5
    assert report["duration_s"] == 79.0
    assert report["distance_m"] == pytest.approx(400.0, abs=0.05)
    assert report["drop"]["distance_m"] == pytest.approx(200.0, abs=0.01)
    assert report["drop"]["bearing_deg"] == pytest.approx(90.0, abs=0.01)
    assert report["max_alt_m"] == 20.0
    assert report["battery_start_pct"] == 99  # at takeoff: the preflight wait is excluded
    assert report["battery_used_pct"] == report["battery_start_pct"] - report["battery_end_pct"]
    assert report["battery_used_pct"] == 16
    assert report["ideal_duration_s"] == pytest.approx(ideal_duration_s(FlightConfig(), 200.0))
    assert report["duration_ratio"] == pytest.approx(79.0 / report["ideal_duration_s"], abs=1e-4)
    assert report["flight_wall_duration_s"] == pytest.approx(7.9)
    assert report["wall_duration_s"] is None  # the caller's whole run, when it gives one
    assert report["autopilot"] == "test"
    assert report["home"] == {"lat": HOME[0], "lon": HOME[1]}


def test_ideal_duration_by_hand_for_the_default_delivery() -> None:
    # 30 m at 2.5 m/s; 500 m at 10 m/s out and back; 25 m down at 1.5 m/s and up at 2.5 m/s;
    # 3 s hold; land 20 m at 1.5 m/s then the last 10 m at 0.5 m/s.
    by_hand = 30 / 2.5 + 500 / 10 + 25 / 1.5 + 3 + 25 / 2.5 + 500 / 10 + 20 / 1.5 + 10 / 0.5
    assert by_hand == pytest.approx(175.0)
    assert ideal_duration_s(Config().flight, 500.0) == pytest.approx(by_hand)
    phases = ideal_phase_durations(Config().flight, 500.0)
    assert phases["land"] == pytest.approx(20 / 1.5 + 10 / 0.5)
    assert list(phases) == ["takeoff", "cruise", "descend", "release", "climb", "return", "land"]


def test_ideal_landing_when_cruise_is_below_the_slow_landing_altitude() -> None:
    flight = FlightConfig(cruise_alt_m=8, handover_alt_m=3, land_speed_high_alt_m=10)
    assert ideal_phase_durations(flight, 100.0)["land"] == pytest.approx(8 / 0.5)
    by_hand = 8 / 2.5 + 100 / 10 + 5 / 1.5 + 3 + 5 / 2.5 + 100 / 10 + 8 / 0.5
    assert ideal_duration_s(flight, 100.0) == pytest.approx(by_hand)


def test_aborted_flight_counts_the_abort_until_landed() -> None:
    bus = Bus()
    recorder = FlightRecorder()
    recorder.attach(bus)
    flight = SyntheticFlight(bus)
    flight.fly_out()
    flight.enter(Phase.ABORT, "abort")
    for _ in range(10):
        flight.step(dalt=-0.5)
    flight.enter(Phase.ABORT, "landed")
    report = _report(recorder, outcome="battery low: 20% < 25%")
    assert report["delivered"] is False
    assert report["phases"][-1] == {
        "name": "abort",
        "start_s": 545.5,
        "end_s": 550.5,
        "duration_s": 5.0,
    }
    assert report["duration_s"] == 550.5 - 505.5


def test_a_flight_that_never_took_off_has_no_duration() -> None:
    bus = Bus()
    recorder = FlightRecorder()
    recorder.attach(bus)
    flight = SyntheticFlight(bus)
    flight.enter(Phase.PREFLIGHT)
    flight.step()
    flight.enter(Phase.ARM)
    flight.step()
    flight.enter(Phase.ABORT, "abort")
    report = _report(recorder, outcome="arming refused: Need Position Estimate")
    assert report["duration_s"] is None
    assert report["duration_ratio"] is None
    assert report["distance_m"] == 0.0


def test_open_phase_ends_at_the_last_sample() -> None:
    bus = Bus()
    recorder = FlightRecorder()
    recorder.attach(bus)
    flight = SyntheticFlight(bus)
    flight.enter(Phase.TAKEOFF)
    for _ in range(4):
        flight.step(dalt=1.0)
    report = _report(recorder, outcome="interrupted")
    assert report["phases"] == [
        {"name": "takeoff", "start_s": 500.0, "end_s": 502.0, "duration_s": 2.0, "ideal_s": 12.0}
    ]
    assert report["duration_s"] == 2.0


def test_recorder_skips_states_without_position_or_time_and_repeats() -> None:
    recorder = FlightRecorder()
    pos = Position(HOME[0], HOME[1], 584.0, 0.0)
    recorder.sample(VehicleState(wall_time=1.0))
    recorder.sample(VehicleState(wall_time=1.0, position=pos))
    recorder.sample(VehicleState(wall_time=1.0, boot_time_s=3.0))
    recorder.sample(VehicleState(wall_time=1.0, boot_time_s=4.0, position=pos))
    recorder.sample(VehicleState(wall_time=1.1, boot_time_s=4.0, position=pos))  # heartbeat
    assert [p.boot_time_s for p in recorder.track] == [4.0]
    assert recorder.home == HOME  # from the first sample, without HOME_POSITION


def test_phase_before_telemetry_has_no_vehicle_time() -> None:
    recorder = FlightRecorder()
    recorder.phase_started("preflight", None, wall_time=10.0)
    assert recorder.phases[0].start_s is None


def test_report_needs_a_home() -> None:
    with pytest.raises(ValueError, match="no home"):
        build_report(FlightRecorder(), config=Config(), mission_id="m", outcome="x", drop=HOME)


def test_files_are_written(
    recorded: tuple[FlightRecorder, SyntheticFlight], tmp_path: Path
) -> None:
    recorder, _ = recorded
    report = _report(recorder)
    json_path, png_path = write_report(tmp_path / "out", report, recorder)
    assert json.loads(json_path.read_text(encoding="utf-8")) == report
    png = png_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 20_000  # two drawn panels, not an empty canvas
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_files_are_written_without_samples(tmp_path: Path) -> None:
    recorder = FlightRecorder()
    recorder.phase_started("preflight", None)
    report = build_report(
        recorder,
        config=Config(),
        mission_id="m",
        outcome="no telemetry",
        drop=HOME,
        home=(*HOME, 584.0),
        wall_duration_s=12.5,
    )
    assert report["wall_duration_s"] == 12.5
    _, png_path = write_report(tmp_path, report, recorder)
    assert png_path.read_bytes().startswith(b"\x89PNG")
