"""ArduCopter flight modes: the HEARTBEAT custom_mode numbers and their names.

Numbers from ArduCopter's `mode.h` (enum class Mode::Number). The bridge speaks names; the
wire carries numbers.
"""

from __future__ import annotations

COPTER_MODES: dict[str, int] = {
    "STABILIZE": 0,
    "ACRO": 1,
    "ALT_HOLD": 2,
    "AUTO": 3,
    "GUIDED": 4,
    "LOITER": 5,
    "RTL": 6,
    "CIRCLE": 7,
    "LAND": 9,
    "DRIFT": 11,
    "SPORT": 13,
    "FLIP": 14,
    "AUTOTUNE": 15,
    "POSHOLD": 16,
    "BRAKE": 17,
    "THROW": 18,
    "AVOID_ADSB": 19,
    "GUIDED_NOGPS": 20,
    "SMART_RTL": 21,
    "FLOWHOLD": 22,
    "FOLLOW": 23,
    "ZIGZAG": 24,
    "SYSTEMID": 25,
    "AUTOROTATE": 26,
    "AUTO_RTL": 27,
    "TURTLE": 28,
}

_NAMES = {number: name for name, number in COPTER_MODES.items()}


def mode_number(name: str) -> int:
    """The custom_mode number of an ArduCopter mode name; ValueError lists the valid names."""
    try:
        return COPTER_MODES[name.upper()]
    except KeyError:
        raise ValueError(
            f"unknown ArduCopter mode {name!r}; known: {', '.join(COPTER_MODES)}"
        ) from None


def mode_name(number: int) -> str:
    """The name of an ArduCopter custom_mode number, or MODE(n) for one we do not know."""
    return _NAMES.get(number, f"MODE({number})")
