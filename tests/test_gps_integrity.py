"""The GPS integrity cross-check on synthetic flights: agreement raises nothing; a spoofing
jump, a slow drift and a clock disagreement each raise their alarm once."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone

from companion.geo import offset
from companion.gps.fix import MODE_3D, QUALITY_GPS, GpsFix
from companion.gps.integrity import IntegrityAlarm, IntegrityMonitor
from firmware_bridge.state import GpsInfo, Position, VehicleState

HOME = (-35.363261, 149.165230)
EPOCH = 1_795_000_000.0  # Unix seconds at t = 0


def _true_position(t: float) -> tuple[float, float]:
    """10 m/s towards the north-east."""
    return offset(*HOME, 10.0 * t, 45.0)


def _fix(t: float, lat: float, lon: float, utc_skew_s: float = 0.0) -> GpsFix:
    return GpsFix(
        time=datetime.fromtimestamp(EPOCH + t + utc_skew_s, tz=timezone.utc),
        lat=lat, lon=lon, alt_msl_m=614.0, geoid_sep_m=20.0, speed_mps=10.0,
        course_deg=45.0, mode=MODE_3D, quality=QUALITY_GPS, sats_used=9, pdop=1.8,
        hdop=1.0, vdop=1.5, satellites=(), valid=True, source="GP", received_at=t,
    )  # fmt: skip


def _state(t: float, lat: float, lon: float) -> VehicleState:
    return VehicleState(
        wall_time=t,
        position=Position(lat, lon, 614.0, 30.0),
        gps=GpsInfo(fix_type=3, satellites=12, hdop=0.8, h_acc_m=1.5),
        utc_time_s=EPOCH + t,
        utc_received_at=t,
    )


def _fly(
    seconds: float,
    companion_error: Callable[[float], tuple[float, float]] = lambda t: (0.0, 0.0),
    utc_skew_s: float = 0.0,
) -> list[object]:
    """Companion fixes at 5 Hz and autopilot states at 10 Hz, each with 1.5 m noise;
    `companion_error(t)` adds (north, east) metres to the companion's fix."""
    rng = random.Random(7)
    monitor = IntegrityMonitor()
    events: list[object] = []
    for step in range(int(seconds * 10)):
        t = step / 10
        lat, lon = offset(*_true_position(t), abs(rng.gauss(0, 1.5)), rng.uniform(0, 360))
        events += monitor.on_autopilot(_state(t, lat, lon), t)
        if step % 2 == 0:
            north, east = companion_error(t)
            lat, lon = offset(*_true_position(t), abs(rng.gauss(0, 1.5)), rng.uniform(0, 360))
            lat, lon = offset(lat, lon, north, 0.0)
            lat, lon = offset(lat, lon, east, 90.0)
            events += monitor.on_companion_fix(_fix(t, lat, lon, utc_skew_s), t)
    return events


def test_agreeing_receivers_raise_nothing() -> None:
    assert _fly(120.0) == []


def test_spoofing_jump_raises_jump_and_divergence_once() -> None:
    events = _fly(60.0, lambda t: (300.0, 0.0) if t >= 20.0 else (0.0, 0.0))
    alarms = [e for e in events if isinstance(e, IntegrityAlarm)]
    assert [a.kind for a in alarms] == ["jump", "divergence"]
    assert 20.0 <= alarms[0].at < 20.3
    assert alarms[1].value > 290


def test_slow_drift_raises_divergence_but_no_jump() -> None:
    events = _fly(120.0, lambda t: (0.5 * max(t - 10.0, 0.0), 0.0))
    alarms = [e for e in events if isinstance(e, IntegrityAlarm)]
    assert [a.kind for a in alarms] == ["divergence"]
    # Raised once the drift passes the bound (~20 m here), not at its first metre.
    assert 30.0 < alarms[0].at < 80.0


def test_divergence_clears_when_the_receivers_agree_again() -> None:
    events = _fly(80.0, lambda t: (100.0, 0.0) if 20.0 <= t < 40.0 else (0.0, 0.0))
    kinds = [(type(e).__name__, e.kind) for e in events if e.kind == "divergence"]
    assert kinds == [("IntegrityAlarm", "divergence"), ("IntegrityCleared", "divergence")]


def test_clock_disagreement_raises_time() -> None:
    events = _fly(10.0, utc_skew_s=5.0)
    assert [e.kind for e in events if isinstance(e, IntegrityAlarm)] == ["time"]


def test_invalid_and_stale_fixes_are_not_compared() -> None:
    monitor = IntegrityMonitor()
    far = offset(*HOME, 5000.0, 0.0)
    invalid = replace(_fix(0.0, *far), valid=False)
    assert monitor.on_companion_fix(invalid, 0.0) == []
    assert monitor.on_autopilot(_state(0.0, *HOME), 0.0) == []
    monitor.on_companion_fix(_fix(0.0, *far), 0.0)
    # The autopilot's reading is now 5 s old: a gap would be latency, not error.
    assert monitor.on_companion_fix(_fix(5.0, *offset(*far, 10.0, 0.0)), 5.0) == []


def _fly_timed(
    seconds: float,
    companion_skew: Callable[[float], float],
    autopilot_delay: Callable[[float], float],
    window_s: float = 5.0,
) -> list[object]:
    """Both receivers agreeing on position; the companion's UTC off by `companion_skew(t)`
    and the autopilot's time reading taken in `autopilot_delay(t)` late (held up on its way)."""
    monitor = IntegrityMonitor(offset_window_s=window_s)
    events: list[object] = []
    for step in range(int(seconds * 10)):
        t = step / 10
        lat, lon = _true_position(t)
        late = autopilot_delay(t)
        state = _state(t, lat, lon)
        state = VehicleState(
            wall_time=t + late, position=state.position, gps=state.gps,
            utc_time_s=EPOCH + t, utc_received_at=t + late,
        )  # fmt: skip
        events += monitor.on_autopilot(state, t + late)
        if step % 2 == 0:
            events += monitor.on_companion_fix(_fix(t, lat, lon, companion_skew(t)), t)
    return events


def test_a_reading_held_up_on_its_way_is_latency_not_a_wrong_clock() -> None:
    # Every 3 s the autopilot's time arrives 3 s late (a stalled reader on a busy machine):
    # its offset looks 3 s behind for that reading, but not the clocks.
    def stalled(t: float) -> float:
        return 3.0 if t > 1.0 and round(t * 10) % 30 == 0 else 0.0

    stalls = _fly_timed(30.0, lambda t: 0.0, stalled)
    assert [e for e in stalls if isinstance(e, IntegrityAlarm)] == []
    # Judged on each reading alone, the same flight would raise it.
    alone = _fly_timed(30.0, lambda t: 0.0, stalled, window_s=0.0)
    assert {e.kind for e in alone if isinstance(e, IntegrityAlarm)} == {"time"}


def test_a_clock_that_falls_behind_or_runs_ahead_is_raised() -> None:
    behind = _fly_timed(40.0, lambda t: -5.0 if t >= 20.0 else 0.0, lambda t: 0.0)
    [alarm] = [e for e in behind if isinstance(e, IntegrityAlarm)]
    assert alarm.kind == "time" and 20.0 < alarm.at <= 25.5  # within the offset window
    ahead = _fly_timed(40.0, lambda t: 5.0 if t >= 20.0 else 0.0, lambda t: 0.0)
    [alarm] = [e for e in ahead if isinstance(e, IntegrityAlarm)]
    assert alarm.kind == "time" and 20.0 <= alarm.at < 20.3  # at once
