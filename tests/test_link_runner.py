"""The link's runner against an in-memory autopilot: replies that beat the sender back,
transport failures, and the backstop, without sockets or a simulator in the way."""

from __future__ import annotations

import queue
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.command_protocol import CommandLong
from firmware_bridge.dialect import mavlink
from firmware_bridge.endpoint import Endpoint
from firmware_bridge.errors import LinkError
from firmware_bridge.link import MavLink


class InstantAutopilot:
    """A transport whose far end answers every COMMAND_LONG before `write` even returns:
    the reply is decoded and dispatched by the link's reader thread first."""

    def __init__(self, *, hold_writer: bool = True, idle_heartbeats: bool = False) -> None:
        self.hold_writer = hold_writer
        self.idle_heartbeats = idle_heartbeats
        self._mav = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
        self._parser = mavlink.MAVLink(None)
        self._inbox: queue.Queue[bytes] = queue.Queue()
        self.dispatched = threading.Event()
        self.commands = 0
        self.broken = False
        self._inbox.put(self._heartbeat())

    def _heartbeat(self) -> bytes:
        return self._frame(mavlink.MAVLink_heartbeat_message(2, 3, 0, 0, 3, 3))

    def _frame(self, msg: mavlink.MAVLink_message) -> bytes:
        return bytes(msg.pack(self._mav))

    def read(self, timeout: float) -> bytes:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            # A live autopilot never falls silent: its telemetry keeps the wire busy.
            return self._heartbeat() if self.idle_heartbeats else b""

    def inject(self, data: bytes) -> None:
        """Bytes from the wire that are not (or not only) MAVLink frames."""
        self._inbox.put(data)

    def write(self, data: bytes) -> None:
        if self.broken:
            raise LinkError("fake: cable cut")
        for msg in self._parser.parse_buffer(data) or []:
            if msg.get_type() == "COMMAND_LONG":
                self.commands += 1
                self.dispatched.clear()
                ack = mavlink.MAVLink_command_ack_message(msg.command, 0, 0, 0, 1, 191)
                self._inbox.put(self._frame(ack))
                if self.hold_writer:
                    # Hold the sender until the reader thread has handed the ACK over.
                    assert self.dispatched.wait(2.0)

    def close(self) -> None:
        pass


def _link(autopilot: InstantAutopilot) -> MavLink:
    link = MavLink(
        Endpoint("tcp", "fake", 1),
        connect_timeout_s=2.0,
        heartbeat_interval_s=60.0,
        opener=lambda _endpoint, _timeout: autopilot,
    )
    link.open()
    link.add_listener(
        lambda m: autopilot.dispatched.set() if m.get_type() == "COMMAND_ACK" else None
    )
    return link


def test_a_reply_faster_than_the_send_is_not_lost() -> None:
    autopilot = InstantAutopilot()
    link = _link(autopilot)
    try:
        ack = link.run(CommandLong(mavlink.MAV_CMD_DO_GRIPPER, [1, 0], 1, 1, timeout=5.0))
        assert ack.result == mavlink.MAV_RESULT_ACCEPTED
        assert autopilot.commands == 1  # answered at once, never re-sent
    finally:
        link.close()


def test_a_broken_transport_surfaces_as_link_error() -> None:
    autopilot = InstantAutopilot()
    link = _link(autopilot)
    autopilot.broken = True
    try:
        with pytest.raises(LinkError, match="cable cut"):
            link.run(CommandLong(mavlink.MAV_CMD_DO_GRIPPER, [1, 0], 1, 1), timeout=5.0)
    finally:
        link.close()


@settings(max_examples=30, deadline=None)
@given(garbage=st.lists(st.binary(min_size=1, max_size=300), max_size=8))
def test_the_reader_survives_any_bytes(garbage: list[bytes]) -> None:
    autopilot = InstantAutopilot(hold_writer=False, idle_heartbeats=True)
    link = _link(autopilot)
    try:
        for chunk in garbage:
            autopilot.inject(chunk)
        # Whatever came before, a good command still gets through (garbage that looks like
        # the start of a frame can swallow one ACK, as on a real wire: the retry recovers).
        command = CommandLong(mavlink.MAV_CMD_DO_GRIPPER, [1, 0], 1, 1, timeout=0.3, retries=5)
        ack = link.run(command)
        assert ack.result == mavlink.MAV_RESULT_ACCEPTED
        assert link.up
    finally:
        link.close()
