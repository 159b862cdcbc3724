"""ArduCopter flight modes: the custom_mode numbers of Mode::Number and the per-mode traits
(ArduCopter/mode.h) that decide arming, GPS needs and takeoff, so that mode changes are
accepted or refused the way ArduCopter does it."""

from __future__ import annotations

from enum import IntEnum

from firmware_bridge.modes import COPTER_MODES

#: ArduCopter's custom_mode numbers (HEARTBEAT.custom_mode), from the bridge's one table.
Mode = IntEnum("Mode", COPTER_MODES)


# Modes this vehicle flies. Others exist on ArduCopter but need a pilot, a rangefinder, a
# helicopter or scripting; asking for them is refused with a STATUSTEXT.
FLYABLE = frozenset(
    {
        Mode.STABILIZE,
        Mode.ALT_HOLD,
        Mode.AUTO,
        Mode.GUIDED,
        Mode.LOITER,
        Mode.RTL,
        Mode.LAND,
        Mode.POSHOLD,
        Mode.BRAKE,
    }
)

# Mode::requires_GPS() == true
REQUIRES_GPS = frozenset(
    {
        Mode.AUTO,
        Mode.GUIDED,
        Mode.LOITER,
        Mode.RTL,
        Mode.CIRCLE,
        Mode.DRIFT,
        Mode.POSHOLD,
        Mode.BRAKE,
        Mode.SMART_RTL,
        Mode.FOLLOW,
        Mode.ZIGZAG,
        Mode.AUTO_RTL,
    }
)

# Mode::allows_arming() for a GCS arm command (AUTO only with AUTO_OPTIONS bit 0)
ALLOWS_ARMING = frozenset(
    {
        Mode.STABILIZE,
        Mode.ACRO,
        Mode.ALT_HOLD,
        Mode.GUIDED,
        Mode.LOITER,
        Mode.DRIFT,
        Mode.SPORT,
        Mode.POSHOLD,
        Mode.FLOWHOLD,
        Mode.GUIDED_NOGPS,
        Mode.ZIGZAG,
        Mode.THROW,
    }
)

# Mode::has_user_takeoff(): MAV_CMD_NAV_TAKEOFF is accepted only in these
USER_TAKEOFF = frozenset({Mode.GUIDED, Mode.LOITER, Mode.POSHOLD, Mode.ALT_HOLD, Mode.FLOWHOLD})

# Mode::has_manual_throttle()
MANUAL_THROTTLE = frozenset({Mode.STABILIZE, Mode.ACRO, Mode.DRIFT, Mode.FLIP, Mode.TURTLE})

# position controller active in flight: HEARTBEAT base_mode gets MAV_MODE_FLAG_GUIDED_ENABLED
POSITION_CONTROLLED = frozenset(
    {Mode.AUTO, Mode.GUIDED, Mode.LOITER, Mode.RTL, Mode.LAND, Mode.POSHOLD, Mode.BRAKE}
)


def mode_name(number: int) -> str:
    """The name ArduCopter prints for a mode number ("GUIDED"), or "Mode(n)"."""
    try:
        return Mode(number).name
    except ValueError:
        return f"Mode({number})"
