"""The link over real UDP sockets on 127.0.0.1: it locks onto the autopilot (the sender of its
first heartbeat from the target ids) and nobody else can take its commands.

An `UdpNode` is a socket playing a MAVLink node: the autopilot, a second vehicle, a ground
station or a spoofer. Nothing here waits for something not to happen: a check that a node got
nothing is made after the link has sent a later message that did arrive where it should, and
over loopback a datagram is in the receiver's buffer as soon as `sendto` returns.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.errors import LinkError
from firmware_bridge.link import MavLink
from tests.mavtools import AUTOPILOT, OWN
from tests.waiting import wait_until

GCS = (255, 190)
OTHER_VEHICLE = (2, 1)
OTHER_COMPONENT = (1, 2)


def _heartbeat() -> MAVLinkMessage:
    return mavlink.MAVLink_heartbeat_message(
        mavlink.MAV_TYPE_QUADROTOR, mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 3, 3
    )


def _text(text: str) -> MAVLinkMessage:
    return mavlink.MAVLink_statustext_message(mavlink.MAV_SEVERITY_INFO, text.encode())


class UdpNode:
    """A UDP socket on 127.0.0.1 that sends MAVLink frames to the link and keeps what the
    link sends back, one decoded datagram at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.sock.getsockname()
        self.received: list[MAVLinkMessage] = []
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def frame(self, msg: MAVLinkMessage, src: tuple[int, int] = AUTOPILOT) -> bytes:
        return bytes(msg.pack(mavlink.MAVLink(None, srcSystem=src[0], srcComponent=src[1])))

    def send(self, port: int, *frames: bytes) -> None:
        """All `frames` in one datagram to the link on `port`."""
        self.sock.sendto(b"".join(frames), ("127.0.0.1", port))

    def drain(self) -> list[MAVLinkMessage]:
        """Everything in the socket's buffer now, decoded; also kept in `received`."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(65535)
                except BlockingIOError:
                    break
                self.received += mavlink.MAVLink(None).parse_buffer(data) or []
        finally:
            self.sock.setblocking(True)
        return self.received

    def wait_for(self, wanted: Callable[[MAVLinkMessage], bool], what: str) -> None:
        wait_until(lambda: any(wanted(m) for m in self.drain()), what)

    def beat(self, port: int, src: tuple[int, int] = AUTOPILOT) -> None:
        """Send heartbeats from `src` to the link every 50 ms until `stop_beating`."""
        self._stop.clear()
        beat = self.frame(_heartbeat(), src)

        def run() -> None:
            while not self._stop.wait(0.05):
                self.send(port, beat)

        self._beater = threading.Thread(target=run, daemon=True)
        self._beater.start()

    def stop_beating(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join()

    def close(self) -> None:
        self.stop_beating()
        self.sock.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def nodes(count: int) -> Iterator[list[UdpNode]]:
    made = [UdpNode() for _ in range(count)]
    try:
        yield made
    finally:
        for node in made:
            node.close()


def _link(port: int, **kw: float) -> tuple[MavLink, list[MAVLinkMessage]]:
    """A link listening on `port`, not opened yet, and the list its listener fills."""
    link = MavLink(f"udp:127.0.0.1:{port}", heartbeat_interval_s=0.05, connect_timeout_s=20.0,
                   **kw)  # fmt: skip
    heard: list[MAVLinkMessage] = []
    link.add_listener(heard.append)
    return link, heard


def _is_ours(msg: MAVLinkMessage) -> bool:
    return (msg.get_srcSystem(), msg.get_srcComponent()) == OWN


def _marker(link: MavLink, node: UdpNode, text: str) -> None:
    """Send a STATUSTEXT through the link and wait until `node` has it: every datagram the
    link sent before it has arrived wherever it went."""
    link.send(_text(text))
    node.wait_for(lambda m: m.get_type() == "STATUSTEXT" and m.text == text, f"marker {text!r}")


def _texts(messages: list[MAVLinkMessage]) -> list[str]:
    return [m.text for m in messages if m.get_type() == "STATUSTEXT"]


def test_a_heartbeat_from_the_autopilot_locks_and_is_answered() -> None:
    port = _free_port()
    with nodes(1) as (autopilot,):
        autopilot.beat(port)
        link, heard = _link(port)
        with link:
            assert link.peer == autopilot.address
            autopilot.wait_for(
                lambda m: _is_ours(m) and m.get_type() == "HEARTBEAT", "the companion's heartbeat"
            )
        assert any(m.get_type() == "HEARTBEAT" for m in heard)


def test_a_spoofer_after_the_lock_gets_nothing_and_redirects_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    with nodes(2) as (autopilot, spoofer), caplog.at_level(logging.INFO, "firmware_bridge.link"):
        autopilot.beat(port)
        link, heard = _link(port)
        with link:
            # The spoofer forges the autopilot's own ids, and a ground station's.
            forged = [
                spoofer.frame(_heartbeat(), AUTOPILOT),
                spoofer.frame(_text("spoofed"), AUTOPILOT),
                spoofer.frame(_heartbeat(), GCS),
            ]
            for frame in forged * 2:
                spoofer.send(port, frame)
            wait_until(lambda: link.stats.foreign_datagrams >= 6, "the spoofer's datagrams dropped")
            _marker(link, autopilot, "after the spoofer")
            assert link.peer == autopilot.address
            assert link.up
        assert spoofer.drain() == []
        assert "spoofed" not in _texts(heard)
    host, spoofer_port = spoofer.address
    named = [r for r in caplog.records if f"{host}:{spoofer_port}" in r.getMessage()]
    assert len(named) == 1 and named[0].levelno == logging.WARNING  # once per address


def test_a_spoofer_speaking_first_does_not_get_the_lock() -> None:
    port = _free_port()
    with nodes(2) as (autopilot, spoofer):
        link, heard = _link(port)
        opened: list[BaseException | None] = []

        def open_link() -> None:
            try:
                link.open()
            except BaseException as exc:
                opened.append(exc)
            else:
                opened.append(None)

        opener = threading.Thread(target=open_link)
        opener.start()
        # Before the autopilot speaks: heartbeats from everyone but the autopilot's ids, a
        # message from the autopilot's ids that is not a heartbeat, and garbage.
        early = [
            spoofer.frame(_heartbeat(), GCS),
            spoofer.frame(_heartbeat(), OTHER_VEHICLE),
            spoofer.frame(_heartbeat(), OTHER_COMPONENT),
            spoofer.frame(_text("spoofed"), AUTOPILOT),
            b"\xfd\x09\x00\x00\x00garbage",
        ]

        def spoof() -> bool:
            """Another round (the link may not be listening yet); True once one was read."""
            for frame in early:
                spoofer.send(port, frame)
            return link.stats.unverified_datagrams >= len(early)

        try:
            wait_until(spoof, "the spoofer's early datagrams read")
            assert link.peer is None and not link.up
            with pytest.raises(LinkError, match="nobody trusted"):
                link.send(_text("to nobody"))
            autopilot.beat(port)
            opener.join(30)
            assert opened == [None]
            assert link.peer == autopilot.address
            _marker(link, autopilot, "locked")
            assert spoofer.drain() == []
            assert "spoofed" not in _texts(heard)
        finally:
            link.close()
            opener.join(30)


def test_other_ids_on_the_locked_address_still_reach_listeners() -> None:
    """A ground station or a second vehicle behind the autopilot's router is heard; only the
    autopilot's own heartbeat locks or keeps the link up."""
    port = _free_port()
    with nodes(1) as (router,):
        router.beat(port)
        link, heard = _link(port)
        with link:
            router.send(port, router.frame(_text("from the gcs"), GCS))
            router.send(port, router.frame(_text("from vehicle 2"), OTHER_VEHICLE))
            wait_until(lambda: len(_texts(heard)) >= 2, "both messages heard")
        assert _texts(heard) == ["from the gcs", "from vehicle 2"]
        assert link.stats.foreign_datagrams == 0


def test_after_a_link_loss_it_locks_onto_the_autopilot_again() -> None:
    port = _free_port()
    with nodes(2) as (first, second):
        first.beat(port)
        link, _heard = _link(port, heartbeat_timeout_s=0.5)
        with link:
            assert link.peer == first.address
            first.stop_beating()
            wait_until(lambda: not link.up, "the link lost")
            assert link.peer is None
            first.drain()  # what the link sent it before the loss; nothing may follow
            first.received.clear()
            # The autopilot comes back from another port (a restarted router or SITL).
            second.beat(port)
            assert link.wait_up(20.0), "the link did not come back"
            assert link.peer == second.address
            assert link.stats.reconnects >= 1
            first.send(port, first.frame(_heartbeat(), AUTOPILOT))  # the old address is a stranger
            wait_until(lambda: link.stats.foreign_datagrams >= 1, "the old address dropped")
            _marker(link, second, "relocked")
        assert first.drain() == []
