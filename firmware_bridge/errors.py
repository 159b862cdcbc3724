"""Exceptions raised by the bridge. Each carries a message that names the cause."""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error the bridge raises."""


class LinkError(BridgeError):
    """The connection to the autopilot could not be opened, or was lost."""


class ProtocolTimeout(BridgeError):
    """The autopilot did not answer within the protocol's timeout, retries included."""


class CommandError(BridgeError):
    """A COMMAND_LONG/COMMAND_INT was answered with a MAV_RESULT other than ACCEPTED."""

    def __init__(self, command: str, result: str, detail: str = "") -> None:
        self.command = command
        self.result = result
        self.detail = detail
        text = f"{command} refused: {result}"
        super().__init__(f"{text} ({detail})" if detail else text)


class MissionError(BridgeError):
    """A mission/fence/rally transfer ended with a MAV_MISSION_RESULT other than ACCEPTED."""

    def __init__(self, operation: str, result: str) -> None:
        self.operation = operation
        self.result = result
        super().__init__(f"mission {operation} failed: {result}")


class ParamError(BridgeError):
    """A parameter does not exist, or its value did not stick."""


class SigningError(BridgeError):
    """MAVLink 2 signing could not be set up: a bad secret, an armed vehicle, or an autopilot
    that did not take the key; the message says which."""


class ArmingRefused(BridgeError):
    """The autopilot refused to arm; `reasons` holds its pre-arm STATUSTEXT messages."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("arming refused: " + ("; ".join(reasons) or "no reason given"))


class FenceError(BridgeError):
    """A geofence or rally upload was not done: the definition is one the flight controller
    would refuse (`problems` lists each, naming the polygon, circle or point), or the
    autopilot refused it (the MAV_MISSION_RESULT and its STATUSTEXT in the message)."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{what}: " + "; ".join(problems))


class FenceMismatch(FenceError):
    """A geofence or rally list read back from the autopilot is not the one uploaded;
    `problems` lists each difference."""
