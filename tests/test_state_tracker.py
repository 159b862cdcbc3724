"""The state cache folds recorded-style telemetry into VehicleState snapshots."""

from __future__ import annotations

from firmware_bridge.dialect import mavlink
from firmware_bridge.state import StatusText, VehicleState
from firmware_bridge.state_tracker import StateTracker
from tests.mavtools import ap


def _tracker() -> tuple[StateTracker, list[object]]:
    published: list[object] = []
    return StateTracker(1, 1, published.append), published


def test_heartbeat_sets_mode_and_armed() -> None:
    tracker, published = _tracker()
    tracker(
        ap(
            "HEARTBEAT",
            type=mavlink.MAV_TYPE_QUADROTOR,
            autopilot=mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA,
            base_mode=mavlink.MAV_MODE_FLAG_SAFETY_ARMED
            | mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED,
            custom_mode=4,
            system_status=mavlink.MAV_STATE_ACTIVE,
        )
    )
    assert tracker.state.mode == "GUIDED"
    assert tracker.state.armed
    assert isinstance(published[-1], VehicleState)


def test_position_battery_gps_ekf_home() -> None:
    tracker, _ = _tracker()
    tracker(ap("GLOBAL_POSITION_INT", time_boot_ms=12_500, lat=-353632610, lon=1491652300,
               alt=614_000, relative_alt=30_000, vx=300, vy=-400, vz=-50, hdg=4500))  # fmt: skip
    tracker(ap("SYS_STATUS", voltage_battery=12600, current_battery=3000, battery_remaining=87,
               onboard_control_sensors_health=mavlink.MAV_SYS_STATUS_PREARM_CHECK))  # fmt: skip
    tracker(ap("BATTERY_STATUS", current_consumed=420, battery_remaining=86))
    tracker(ap("GPS_RAW_INT", fix_type=3, satellites_visible=10, eph=121, epv=65535, h_acc=2500))
    tracker(ap("SYSTEM_TIME", time_unix_usec=1_795_000_000_000_000, time_boot_ms=12_600))
    tracker(ap("EKF_STATUS_REPORT", flags=0x1FF))
    tracker(ap("HOME_POSITION", latitude=-353632610, longitude=1491652300, altitude=584_000))
    s = tracker.state
    assert s.boot_time_s == 12.6
    assert s.position is not None
    assert (s.position.lat, s.position.alt_rel_m) == (-35.363261, 30.0)
    assert s.ground_speed_mps == 5.0
    assert s.heading_deg == 45.0
    assert (s.battery.voltage_v, s.battery.current_a) == (12.6, 30.0)
    assert (s.battery.remaining_pct, s.battery.consumed_mah) == (86, 420.0)
    assert s.prearm_ok
    assert (s.gps.fix_type, s.gps.satellites, s.gps.hdop, s.gps.vdop) == (3, 10, 1.21, None)
    assert (s.gps.h_acc_m, s.gps.v_acc_m) == (2.5, None)
    assert s.utc_time_s == 1_795_000_000.0 and s.utc_received_at is not None
    assert s.ekf_flags == 0x1FF
    assert s.home is not None and s.home.alt_msl_m == 584.0


def test_other_systems_and_our_own_heartbeat_are_ignored() -> None:
    tracker, _ = _tracker()
    tracker(ap("HEARTBEAT", src=(2, 1), custom_mode=6, base_mode=128))
    tracker(ap("HEARTBEAT", src=(1, 191), type=mavlink.MAV_TYPE_ONBOARD_CONTROLLER))
    assert tracker.state.mode == "UNKNOWN"


def test_chunked_statustext_is_joined() -> None:
    tracker, published = _tracker()
    first = "PreArm: " + "x" * 42
    tracker(ap("STATUSTEXT", severity=2, text=first, id=7, chunk_seq=0))
    assert not [p for p in published if isinstance(p, StatusText)]
    tracker(ap("STATUSTEXT", severity=2, text="tail", id=7, chunk_seq=1))
    texts = [p for p in published if isinstance(p, StatusText)]
    assert [t.text for t in texts] == [first + "tail"]
    assert tracker.recent_texts()[-1].text == first + "tail"


def test_wait_for_returns_none_on_timeout() -> None:
    tracker, _ = _tracker()
    assert tracker.wait_for(lambda s: s.armed, 0.05) is None


def test_zero_position_before_the_ekf_origin_is_no_position() -> None:
    tracker, _ = _tracker()
    tracker(ap("GLOBAL_POSITION_INT", time_boot_ms=1000, lat=0, lon=0, alt=0, relative_alt=0))
    assert tracker.state.position is None
    assert tracker.state.boot_time_s == 1.0
