"""The MAVLink dialect the emulated flight controller speaks, chosen here and not borrowed
from the bridge: the vehicle is the device under emulation and must not share the bridge's
reading of MAVLink, or a mistake there would be mirrored here and go unnoticed.

pymavlink picks MAVLink 1 or 2 from MAVLINK20 when it is first imported, so the environment is
set (without overriding a caller's choice) before the import. ArduPilot speaks MAVLink 2 with
the ardupilotmega dialect.
"""

from __future__ import annotations

import os

os.environ.setdefault("MAVLINK20", "1")
os.environ.setdefault("MAVLINK_DIALECT", "ardupilotmega")

from pymavlink.dialects.v20 import ardupilotmega as mavlink

MAVLinkMessage = mavlink.MAVLink_message

__all__ = ["MAVLinkMessage", "mavlink"]
