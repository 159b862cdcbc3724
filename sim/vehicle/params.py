"""The vehicle's parameter table and the MAVLink parameter protocol, server side.

Names, types and defaults are ArduCopter's (stock firmware, before any parameter file) for
everything the bridge, the built-in vehicle and SkyCourier's parameter files use; the server
then loads the shipped files (parm_file.SHIPPED_PARAM_FILES) over them, as a SkyCourier flight
controller is set up. Two exceptions to "ArduCopter's default": BATT_MONITOR is 4 (SITL's
copter.parm; the simulated battery is always there) and the SCW_* parameters of our
companion_watchdog.lua, which exist on ArduPilot only while that script runs.

Some parameters are only stored, so that a parameter file or the companion's read-back finds
them, and change nothing here: SERIAL2_PROTOCOL, SERIAL2_BAUD, SIM_GRPS_ENABLE, SIM_GRPS_PIN
(the parcel is simulated whatever they say), GRIP_NEUTRAL and BATT_MONITOR. SCR_ENABLE only
switches the emulated companion watchdog script on and off. Of GUID_OPTIONS only bit 6 (GUIDED
targets flown by the waypoint navigator, and so by the path planner) changes anything here;
OA_TYPE is read when the vehicle is built, as ArduPilot reads it at boot (`avoidance`).

Wire behaviour follows GCS_Param.cpp: PARAM_VALUE carries the value C-cast to float whatever
its type; integers are stored after ArduPilot's +0.01 rounding and clamping to the type's
range (AP_Param::set_float); an unknown name or a NaN/inf value gets no answer at all; a set is
echoed to every connected client with param_index -1 (65535); a read by name answers with
index -1, a read by index with that index.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .dialect import MAVLinkMessage, mavlink
from .parm_file import ParmFileError, read_parm_file

INT8 = mavlink.MAV_PARAM_TYPE_INT8
INT16 = mavlink.MAV_PARAM_TYPE_INT16
INT32 = mavlink.MAV_PARAM_TYPE_INT32
REAL32 = mavlink.MAV_PARAM_TYPE_REAL32

_INT_RANGE = {INT8: (-128, 127), INT16: (-32768, 32767), INT32: (-(2**31), 2**31 - 1)}
NO_INDEX = 65535  # param_index -1 as the uint16 it is on the wire


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its ArduPilot name, default and MAV_PARAM_TYPE."""

    name: str
    default: float
    ptype: int


DEFAULTS: tuple[ParamSpec, ...] = (
    ParamSpec("ANGLE_MAX", 3000, INT16),
    ParamSpec("ARMING_CHECK", 1, INT32),
    ParamSpec("AUTO_OPTIONS", 0, INT32),
    ParamSpec("BATT_ARM_MAH", 0, INT32),
    ParamSpec("BATT_ARM_VOLT", 0.0, REAL32),
    ParamSpec("BATT_CAPACITY", 3300, INT32),
    ParamSpec("BATT_CRT_MAH", 0.0, REAL32),
    ParamSpec("BATT_CRT_VOLT", 0.0, REAL32),
    ParamSpec("BATT_FS_CRT_ACT", 0, INT8),
    ParamSpec("BATT_FS_LOW_ACT", 0, INT8),
    ParamSpec("BATT_LOW_MAH", 0.0, REAL32),
    ParamSpec("BATT_LOW_VOLT", 10.5, REAL32),
    ParamSpec("BATT_MONITOR", 4, INT8),
    ParamSpec("DISARM_DELAY", 10, INT8),
    ParamSpec("FENCE_ACTION", 1, INT8),
    ParamSpec("FENCE_ALT_MAX", 100.0, REAL32),
    ParamSpec("FENCE_ENABLE", 0, INT8),
    ParamSpec("FENCE_MARGIN", 2.0, REAL32),
    ParamSpec("FENCE_RADIUS", 300.0, REAL32),
    ParamSpec("FENCE_TYPE", 7, INT8),
    ParamSpec("FS_GCS_ENABLE", 0, INT8),
    ParamSpec("FS_GCS_TIMEOUT", 5.0, REAL32),
    ParamSpec("FS_OPTIONS", 16, INT32),
    ParamSpec("GRIP_ENABLE", 0, INT8),
    ParamSpec("GRIP_GRAB", 1900, INT16),
    ParamSpec("GRIP_NEUTRAL", 1500, INT16),
    ParamSpec("GRIP_RELEASE", 1100, INT16),
    ParamSpec("GRIP_TYPE", 0, INT8),
    ParamSpec("GUID_OPTIONS", 0, INT32),
    ParamSpec("GUID_TIMEOUT", 3.0, REAL32),
    ParamSpec("LAND_ALT_LOW", 1000, INT16),
    ParamSpec("LAND_SPEED", 50, INT16),
    ParamSpec("LAND_SPEED_HIGH", 0, INT16),
    # Path planning around the fence (avoidance.py): OA_TYPE is read at boot.
    ParamSpec("OA_MARGIN_MAX", 5.0, REAL32),
    ParamSpec("OA_TYPE", 0, INT8),
    ParamSpec("PLDP_DELAY", 0.0, REAL32),
    ParamSpec("PLDP_SPEED_DN", 0.0, REAL32),
    ParamSpec("RTL_ALT", 1500, INT32),
    ParamSpec("RTL_ALT_FINAL", 0, INT16),
    ParamSpec("RTL_CLIMB_MIN", 0, INT16),
    ParamSpec("RTL_CONE_SLOPE", 3.0, REAL32),
    ParamSpec("RTL_LOIT_TIME", 5000, INT32),
    ParamSpec("RTL_SPEED", 0, INT16),
    # The companion watchdog (firmware_bridge/autopilot/scripts/companion_watchdog.lua),
    # which the built-in vehicle runs, while SCR_ENABLE is 1, as a flight controller set up
    # for SkyCourier does.
    ParamSpec("SCR_ENABLE", 0, INT8),
    ParamSpec("SCW_ACTION", 6, REAL32),
    ParamSpec("SCW_COMPID", 191, REAL32),
    ParamSpec("SCW_ENABLE", 1, REAL32),
    ParamSpec("SCW_TIMEOUT", 5.0, REAL32),
    ParamSpec("SERIAL2_BAUD", 57, INT32),
    ParamSpec("SERIAL2_PROTOCOL", 2, INT8),
    ParamSpec("SERVO8_FUNCTION", 0, INT16),
    ParamSpec("SIM_GRPS_ENABLE", 0, INT8),
    ParamSpec("SIM_GRPS_PIN", -1, INT8),
    ParamSpec("SIM_WIND_DIR", 180.0, REAL32),
    ParamSpec("SIM_WIND_SPD", 0.0, REAL32),
    ParamSpec("SYSID_MYGCS", 255, INT16),
    ParamSpec("SYSID_THISMAV", 1, INT16),
    ParamSpec("WPNAV_ACCEL", 250.0, REAL32),
    ParamSpec("WPNAV_ACCEL_Z", 100.0, REAL32),
    ParamSpec("WPNAV_JERK", 1.0, REAL32),
    ParamSpec("WPNAV_RADIUS", 200.0, REAL32),
    ParamSpec("WPNAV_SPEED", 1000.0, REAL32),
    ParamSpec("WPNAV_SPEED_DN", 150.0, REAL32),
    ParamSpec("WPNAV_SPEED_UP", 250.0, REAL32),
)


def _to_float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def coerce(value: float, ptype: int) -> float:
    """The value ArduPilot stores when asked to set `value` (AP_Param::set_float)."""
    if ptype == REAL32:
        return _to_float32(value)
    low, high = _INT_RANGE[ptype]
    nudged = value + (0.01 if value >= 0 else -0.01)
    return float(int(max(low, min(high, nudged))))


class ParamTable:
    """Current values by name, in a fixed order that gives each its param_index.

    Built from the defaults, then each of `files` in order (ArduPilot's --defaults), then
    `overrides`; a name the table does not have is a ValueError (ParmFileError for a file,
    naming it and the line)."""

    def __init__(
        self,
        overrides: Mapping[str, float] | None = None,
        files: Sequence[Path | str] = (),
    ) -> None:
        self._specs = {spec.name: spec for spec in DEFAULTS}
        self._order = sorted(self._specs)
        self._values = {spec.name: coerce(spec.default, spec.ptype) for spec in DEFAULTS}
        for path in files:
            for name, value, line in read_parm_file(path):
                if name not in self._specs:
                    raise ParmFileError(f"{path}:{line}: unknown parameter {name}")
                self.set(name, value)
        for name, value in (overrides or {}).items():
            if name not in self._specs:
                raise ValueError(f"unknown parameter {name!r}")
            self.set(name, value)

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __len__(self) -> int:
        return len(self._order)

    def set(self, name: str, value: float) -> float:
        """Store `value` as ArduPilot would and return what was stored."""
        stored = coerce(value, self._specs[name].ptype)
        self._values[name] = stored
        return stored

    def value_message(self, name: str, index: int) -> MAVLinkMessage:
        """PARAM_VALUE for `name`, with the given param_index."""
        return mavlink.MAVLink_param_value_message(
            name.encode(), self._values[name], self._specs[name].ptype, len(self._order), index
        )

    def index_message(self, index: int) -> MAVLinkMessage | None:
        """PARAM_VALUE for the parameter at `index`, or None when there is none."""
        if 0 <= index < len(self._order):
            return self.value_message(self._order[index], index)
        return None


def _param_id(msg: MAVLinkMessage) -> str:
    raw = msg.param_id
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    return raw.split("\0", 1)[0]


class ParamServer:
    """Answers PARAM_REQUEST_LIST, PARAM_REQUEST_READ and PARAM_SET.

    `handle` returns (message, to_all) pairs: to_all True means every connected client gets
    it (the PARAM_SET echo), False means only the client that asked."""

    def __init__(self, table: ParamTable) -> None:
        self.table = table

    def handle(self, msg: MAVLinkMessage) -> list[tuple[MAVLinkMessage, bool]]:
        """Reply to one parameter-protocol message (an empty list: ArduPilot stays silent)."""
        kind = msg.get_type()
        if kind == "PARAM_REQUEST_LIST":
            replies = (self.table.index_message(i) for i in range(len(self.table)))
            return [(reply, False) for reply in replies if reply is not None]
        if kind == "PARAM_REQUEST_READ":
            if msg.param_index >= 0:
                reply = self.table.index_message(msg.param_index)
                return [(reply, False)] if reply is not None else []
            name = _param_id(msg)
            if name in self.table:
                return [(self.table.value_message(name, NO_INDEX), False)]
            return []
        if kind == "PARAM_SET":
            name = _param_id(msg)
            if name not in self.table or math.isnan(msg.param_value) or math.isinf(msg.param_value):
                return []
            self.table.set(name, msg.param_value)
            return [(self.table.value_message(name, NO_INDEX), True)]
        return []
