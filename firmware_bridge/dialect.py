"""The one place that chooses the MAVLink dialect and wire version.

pymavlink decides between MAVLink 1 and 2 when `mavutil` is first imported, from the
MAVLINK20 environment variable, so it must be set before any pymavlink import. Every
module of the project imports the dialect from here instead of from pymavlink directly.
"""

from __future__ import annotations

import os

os.environ.setdefault("MAVLINK20", "1")
os.environ.setdefault("MAVLINK_DIALECT", "ardupilotmega")

from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mavlink

MAVLinkMessage = mavlink.MAVLink_message

__all__ = ["MAVLinkMessage", "enum_name", "mavlink", "mavutil"]


def enum_name(enum: str, value: int) -> str:
    """Name of `value` in MAVLink enum `enum` (e.g. "MAV_RESULT", 4 -> "MAV_RESULT_FAILED")."""
    entry = mavlink.enums.get(enum, {}).get(value)
    return entry.name if entry is not None else f"{enum}({value})"
