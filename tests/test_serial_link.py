"""The link over a real pseudo-terminal, as over a flight controller's UART or USB port:
open, heartbeat, and reopening after the device vanishes and re-enumerates."""

from __future__ import annotations

import os
import pty
import threading
import time
import tty
from pathlib import Path

import pytest

from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import LinkError
from firmware_bridge.link import MavLink
from firmware_bridge.state import LinkState


class FakeFlightController:
    """A pty whose far end sends ArduCopter heartbeats at 20 Hz and records what arrives."""

    def __init__(self) -> None:
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        mav = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
        beat = mavlink.MAVLink_heartbeat_message(
            mavlink.MAV_TYPE_QUADROTOR, mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 3, 3
        )
        os.set_blocking(self.master, False)
        while not self._stop.is_set():
            try:
                os.write(self.master, beat.pack(mav))
                self.received += os.read(self.master, 4096)
            except BlockingIOError:
                pass
            except OSError:
                return
            time.sleep(0.05)

    def unplug(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self._slave)


def test_link_over_a_pty_sends_our_heartbeat() -> None:
    fc = FakeFlightController()
    try:
        with MavLink(f"{fc.path}:115200", connect_timeout_s=3.0, heartbeat_interval_s=0.1) as link:
            assert link.up
            time.sleep(0.5)
        frames = mavlink.MAVLink(None).parse_buffer(bytes(fc.received)) or []
        beats = [f for f in frames if f.get_type() == "HEARTBEAT"]
        assert beats, "the companion's heartbeat never reached the flight controller"
        assert beats[0].type == mavlink.MAV_TYPE_ONBOARD_CONTROLLER
        assert beats[0].get_srcComponent() == mavlink.MAV_COMP_ID_ONBOARD_COMPUTER
    finally:
        fc.unplug()


def test_link_reopens_after_usb_reenumeration(tmp_path: Path) -> None:
    by_id = tmp_path / "usb-ArduPilot_fmuv3-if00"
    first = FakeFlightController()
    by_id.symlink_to(first.path)
    states: list[LinkState] = []
    link = MavLink(
        f"{by_id}:921600",
        connect_timeout_s=3.0,
        heartbeat_timeout_s=0.5,
        publish=lambda m: states.append(m) if isinstance(m, LinkState) else None,
    )
    link.open()
    second = None
    try:
        first.unplug()
        by_id.unlink()
        deadline = time.monotonic() + 5
        while link.up and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not link.up
        with pytest.raises(LinkError, match="not answering"):
            link.require_up()
        second = FakeFlightController()
        by_id.symlink_to(second.path)
        assert link.wait_up(10.0), "link did not come back after the device re-appeared"
        assert link.stats.reconnects >= 1
        assert [s.up for s in states][-2:] == [False, True]
    finally:
        link.close()
        if second is not None:
            second.unplug()


def test_missing_serial_device_is_named() -> None:
    with pytest.raises(LinkError, match="/dev/ttyNOPE0 does not exist"):
        MavLink("/dev/ttyNOPE0:57600", connect_timeout_s=1.0).open()
