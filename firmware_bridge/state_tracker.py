"""Keeps the latest `VehicleState` from the autopilot's telemetry and publishes it.

It is a link listener: HEARTBEAT, GLOBAL_POSITION_INT, GPS_RAW_INT, SYS_STATUS,
BATTERY_STATUS, EKF_STATUS_REPORT, EXTENDED_SYS_STATE, HOME_POSITION, MISSION_CURRENT and
STATUSTEXT each update their part of an immutable snapshot, which is replaced (never
mutated) and published, so readers on other threads always see a consistent whole.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.modes import mode_name
from firmware_bridge.state import Battery, GpsInfo, Position, StatusText, VehicleState

_PREARM_BIT = mavlink.MAV_SYS_STATUS_PREARM_CHECK
_STATUSTEXT_KEEP = 64
_STATUSTEXT_CHUNK_LEN = 50
_STATUSTEXT_MAX_CHUNKS = 8


def _accuracy_m(mm: int) -> float | None:
    """GPS_RAW_INT h_acc/v_acc in mm; 0 means the receiver gives none."""
    return mm / 1000.0 if mm else None


class StateTracker:
    """Folds the autopilot's telemetry into `VehicleState` snapshots."""

    def __init__(
        self,
        target_system: int,
        target_component: int,
        publish: Callable[[object], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` times `VehicleState.utc_received_at`: the daemon's monotonic clock, or a
        simulator's clock when the companion runs in simulated time."""
        self.target_system = target_system
        self.clock = clock
        self.target_component = target_component
        self._publish = publish or (lambda _msg: None)
        self._state = VehicleState(wall_time=time.time())
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._texts: deque[StatusText] = deque(maxlen=_STATUSTEXT_KEEP)
        self._chunks: dict[int, list[str]] = {}

    @property
    def state(self) -> VehicleState:
        """The latest snapshot."""
        return self._state

    def recent_texts(self, since_wall: float = 0.0) -> list[StatusText]:
        """STATUSTEXT messages received at or after `since_wall` (wall-clock seconds)."""
        with self._lock:
            return [t for t in self._texts if t.wall_time >= since_wall]

    def wait_for(
        self, predicate: Callable[[VehicleState], bool], timeout: float
    ) -> VehicleState | None:
        """Block until a snapshot satisfies `predicate`; None after `timeout` seconds."""
        with self._changed:
            ok = self._changed.wait_for(lambda: predicate(self._state), timeout=timeout)
            return self._state if ok else None

    def __call__(self, msg: MAVLinkMessage) -> None:
        """Link listener entry point."""
        if msg.get_srcSystem() != self.target_system:
            return
        kind = msg.get_type()
        if kind == "STATUSTEXT":
            self._on_statustext(msg)
            return
        if msg.get_srcComponent() != self.target_component:
            return
        handler = self._HANDLERS.get(kind)
        if handler is None:
            return
        changes = handler(self, msg)
        if changes is None:
            return
        boot_ms = getattr(msg, "time_boot_ms", None)
        if boot_ms is not None:
            changes["boot_time_s"] = boot_ms / 1000.0
        with self._changed:
            self._state = dataclasses.replace(self._state, wall_time=time.time(), **changes)
            self._changed.notify_all()
            state = self._state
        if kind in ("HEARTBEAT", "GLOBAL_POSITION_INT", "EXTENDED_SYS_STATE"):
            self._publish(state)

    # -- per-message handlers: each returns the fields it changes ---------------------------

    def _heartbeat(self, msg: MAVLinkMessage) -> dict | None:
        if msg.type in (mavlink.MAV_TYPE_GCS, mavlink.MAV_TYPE_ONBOARD_CONTROLLER):
            return None
        return {
            "armed": bool(msg.base_mode & mavlink.MAV_MODE_FLAG_SAFETY_ARMED),
            "mode": mode_name(msg.custom_mode),
            "system_status": msg.system_status,
            "heartbeats": self._state.heartbeats + 1,
        }

    def _global_position(self, msg: MAVLinkMessage) -> dict:
        # ArduPilot sends GLOBAL_POSITION_INT with lat = lon = 0 until the EKF has an origin:
        # that is "no position", not a point in the Gulf of Guinea.
        has_fix = msg.lat != 0 or msg.lon != 0
        return {
            "position": Position(
                msg.lat / 1e7, msg.lon / 1e7, msg.alt / 1000.0, msg.relative_alt / 1000.0
            )
            if has_fix
            else None,
            "velocity_ned_mps": (msg.vx / 100.0, msg.vy / 100.0, msg.vz / 100.0),
            "heading_deg": None if msg.hdg == 65535 else msg.hdg / 100.0,
        }

    def _gps_raw(self, msg: MAVLinkMessage) -> dict:
        return {
            "gps": GpsInfo(
                fix_type=msg.fix_type,
                satellites=None if msg.satellites_visible == 255 else msg.satellites_visible,
                hdop=None if msg.eph == 65535 else msg.eph / 100.0,
                vdop=None if msg.epv == 65535 else msg.epv / 100.0,
                h_acc_m=_accuracy_m(getattr(msg, "h_acc", 0)),
                v_acc_m=_accuracy_m(getattr(msg, "v_acc", 0)),
            )
        }

    def _sys_status(self, msg: MAVLinkMessage) -> dict:
        old = self._state.battery
        return {
            "battery": dataclasses.replace(
                old,
                voltage_v=None if msg.voltage_battery == 65535 else msg.voltage_battery / 1000.0,
                current_a=None if msg.current_battery == -1 else msg.current_battery / 100.0,
                remaining_pct=None if msg.battery_remaining == -1 else msg.battery_remaining,
            ),
            "prearm_ok": bool(msg.onboard_control_sensors_health & _PREARM_BIT),
        }

    def _battery_status(self, msg: MAVLinkMessage) -> dict:
        old = self._state.battery
        consumed = None if msg.current_consumed == -1 else float(msg.current_consumed)
        remaining = None if msg.battery_remaining == -1 else msg.battery_remaining
        return {
            "battery": Battery(
                voltage_v=old.voltage_v,
                current_a=old.current_a,
                remaining_pct=remaining if remaining is not None else old.remaining_pct,
                consumed_mah=consumed,
            )
        }

    def _ekf(self, msg: MAVLinkMessage) -> dict:
        return {"ekf_flags": msg.flags}

    def _extended_sys_state(self, msg: MAVLinkMessage) -> dict:
        return {"landed_state": msg.landed_state}

    def _home(self, msg: MAVLinkMessage) -> dict:
        return {
            "home": Position(msg.latitude / 1e7, msg.longitude / 1e7, msg.altitude / 1000.0, 0.0)
        }

    def _system_time(self, msg: MAVLinkMessage) -> dict | None:
        if not msg.time_unix_usec:
            return None  # 0: the autopilot has no UTC yet
        return {"utc_time_s": msg.time_unix_usec / 1e6, "utc_received_at": self.clock()}

    def _mission_current(self, msg: MAVLinkMessage) -> dict:
        return {"mission_seq": msg.seq}

    _HANDLERS: ClassVar[dict[str, Callable[[StateTracker, MAVLinkMessage], dict | None]]] = {
        "HEARTBEAT": _heartbeat,
        "GLOBAL_POSITION_INT": _global_position,
        "GPS_RAW_INT": _gps_raw,
        "SYS_STATUS": _sys_status,
        "BATTERY_STATUS": _battery_status,
        "EKF_STATUS_REPORT": _ekf,
        "EXTENDED_SYS_STATE": _extended_sys_state,
        "HOME_POSITION": _home,
        "MISSION_CURRENT": _mission_current,
        "SYSTEM_TIME": _system_time,
    }

    def _on_statustext(self, msg: MAVLinkMessage) -> None:
        """Join chunked STATUSTEXT (MAVLink 2 `id`/`chunk_seq`) and publish whole texts."""
        text = msg.text.rstrip("\x00") if isinstance(msg.text, str) else str(msg.text)
        msg_id = getattr(msg, "id", 0)
        if msg_id:
            # A text of 50 characters may continue in the next chunk of the same id.
            parts = self._chunks.setdefault(msg_id, [])
            parts.append(text)
            if len(text) >= _STATUSTEXT_CHUNK_LEN and len(parts) < _STATUSTEXT_MAX_CHUNKS:
                return
            text = "".join(self._chunks.pop(msg_id))
        entry = StatusText(
            severity=msg.severity,
            text=text,
            wall_time=time.time(),
            boot_time_s=self._state.boot_time_s,
        )
        with self._lock:
            self._texts.append(entry)
        self._publish(entry)
