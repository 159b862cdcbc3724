"""ArduCopter flight modes: the custom_mode numbers of Mode::Number and the per-mode traits
(ArduCopter/mode.h) that decide arming, GPS needs and takeoff, so that mode changes are
accepted or refused the way ArduCopter does it.

The numbers are transcribed here from mode.h rather than taken from the bridge's table: the
vehicle emulates the autopilot, so a wrong number in the bridge must show up as a mismatch,
not be mirrored. A test checks both tables against pymavlink's mode_mapping_acm.
"""

from __future__ import annotations

from enum import IntEnum


class Mode(IntEnum):
    """ArduCopter's Mode::Number (HEARTBEAT.custom_mode), ArduCopter/mode.h."""

    STABILIZE = 0
    ACRO = 1
    ALT_HOLD = 2
    AUTO = 3
    GUIDED = 4
    LOITER = 5
    RTL = 6
    CIRCLE = 7
    LAND = 9
    DRIFT = 11
    SPORT = 13
    FLIP = 14
    AUTOTUNE = 15
    POSHOLD = 16
    BRAKE = 17
    THROW = 18
    AVOID_ADSB = 19
    GUIDED_NOGPS = 20
    SMART_RTL = 21
    FLOWHOLD = 22
    FOLLOW = 23
    ZIGZAG = 24
    SYSTEMID = 25
    AUTOROTATE = 26
    AUTO_RTL = 27
    TURTLE = 28


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
