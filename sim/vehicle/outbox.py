"""Where the vehicle's parts put the messages they want sent, and to whom.

ArduPilot answers a request on the link it came from (COMMAND_ACK, MISSION_*, PARAM_VALUE of a
read) but sends STATUSTEXT, PARAM_SET echoes and telemetry to every link. Each queued message
carries its destination: a client id, or None for every connected client.
"""

from __future__ import annotations

from .dialect import MAVLinkMessage, mavlink

STATUSTEXT_LEN = 50


def statustext(severity: int, text: str) -> MAVLinkMessage:
    """A STATUSTEXT (truncated to the field's 50 characters, as ArduPilot does)."""
    return mavlink.MAVLink_statustext_message(severity, text[:STATUSTEXT_LEN].encode(), 0, 0)


class Outbox:
    """Messages waiting to be written, with their destination."""

    def __init__(self) -> None:
        self._queue: list[tuple[MAVLinkMessage, int | None]] = []

    def send(self, msg: MAVLinkMessage, to: int | None = None) -> None:
        """Queue `msg` for client `to`, or for every client when `to` is None."""
        self._queue.append((msg, to))

    def text(self, severity: int, text: str, to: int | None = None) -> None:
        """Queue a STATUSTEXT."""
        self._queue.append((statustext(severity, text), to))

    def drain(self) -> list[tuple[MAVLinkMessage, int | None]]:
        """Everything queued so far, oldest first; the outbox is empty afterwards."""
        queued, self._queue = self._queue, []
        return queued
