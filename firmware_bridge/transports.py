"""Byte transports under the MAVLink link: TCP, UDP and serial, each bounded in time.

pymavlink's own `mavfile` classes sleep, print and can block forever on a serial port, so
the bridge uses these thin adapters instead: a read never waits longer than asked, and every
failure is a `LinkError` that names the endpoint and the cause. Streams (TCP, serial) have
one peer; UDP names the sender of every datagram, so that the link can tell the autopilot
from anyone else who can reach the port.
"""

from __future__ import annotations

import os
import select
import socket
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import serial

from firmware_bridge.endpoint import Endpoint
from firmware_bridge.errors import LinkError

_READ_SIZE = 4096
_MAX_DATAGRAM = 65535

Address = tuple[str, int]
"""(host, port) of a datagram's sender."""


class Transport(Protocol):
    """A byte stream to the autopilot (TCP, serial): whatever arrives comes from it."""

    def read(self, timeout: float) -> bytes:
        """Bytes that arrived within `timeout` s (b"" if none); LinkError if the link broke."""
        ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Datagram:
    """One datagram as it arrived, and who sent it."""

    data: bytes
    sender: Address


@runtime_checkable
class DatagramTransport(Protocol):
    """Datagrams (UDP) from anyone who can reach the port: each read names its sender, and
    the link locks the transport onto the autopilot once it has heard the autopilot's
    heartbeat."""

    def receive(self, timeout: float) -> Datagram | None:
        """The next datagram within `timeout` s (None if none); LinkError if the link broke."""
        ...

    def lock(self, peer: Address) -> None:
        """The autopilot is at `peer` (its heartbeat came from there): a listening transport
        sends to it, and only to it, from now on."""
        ...

    def write(self, data: bytes) -> None:
        """Send one datagram; LinkError if there is nobody to send it to yet."""
        ...

    def close(self) -> None: ...


class TcpTransport:
    """A TCP client, as to ArduPilot SITL's port 5760."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self._name = str(endpoint)
        try:
            self._sock = socket.create_connection(
                (endpoint.address, endpoint.port_or_baud), timeout=timeout
            )
        except OSError as exc:
            raise LinkError(f"cannot connect to {self._name}: {exc.strerror or exc}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(timeout)

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not ready:
            return b""
        try:
            data = self._sock.recv(_READ_SIZE)
        except OSError as exc:
            raise LinkError(f"{self._name}: {exc.strerror or exc}") from exc
        if not data:
            raise LinkError(f"{self._name}: connection closed by the autopilot")
        return data

    def write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise LinkError(f"{self._name}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._sock.close()


class UdpTransport:
    """UDP to an autopilot: listen for it (udpin) or send to a fixed address (udpout).

    A datagram can come from anyone who can reach the port, so this transport only reads one
    datagram at a time and says who sent it; the link decides whom to trust and `lock`s the
    transport onto the autopilot. Listening, it answers only the locked address, and nobody
    before the lock (there is nobody trusted to answer yet). Sending to a fixed address, it
    always sends there: the address is configured, and the autopilot may wait to hear from
    us before it speaks.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self._name = str(endpoint)
        self._listening = endpoint.kind == "udpin"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._peer: Address | None = None
        try:
            if self._listening:
                # No SO_REUSEADDR: UDP has no TIME_WAIT to wait out, and with it another
                # program could bind the same port and take the autopilot's datagrams.
                self._sock.bind((endpoint.address, endpoint.port_or_baud))
            else:
                self._peer = (endpoint.address, endpoint.port_or_baud)
        except OSError as exc:
            self._sock.close()
            raise LinkError(f"cannot open {self._name}: {exc.strerror or exc}") from exc

    def receive(self, timeout: float) -> Datagram | None:
        """The next datagram within `timeout` s, with its sender; None if none came."""
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not ready:
            return None
        try:
            data, sender = self._sock.recvfrom(_MAX_DATAGRAM)
        except OSError as exc:
            raise LinkError(f"{self._name}: {exc.strerror or exc}") from exc
        return Datagram(data, (sender[0], sender[1]))

    def lock(self, peer: Address) -> None:
        """Answer `peer` from now on (listening only; a fixed address stays as configured)."""
        if self._listening:
            self._peer = peer

    def write(self, data: bytes) -> None:
        if self._peer is None:
            raise LinkError(
                f"{self._name}: not sending: no heartbeat from the autopilot yet, so there "
                "is nobody trusted to send to"
            )
        try:
            self._sock.sendto(data, self._peer)
        except OSError as exc:
            raise LinkError(f"{self._name}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._sock.close()


class SerialTransport:
    """A UART or USB serial port; reopened by the link after the device re-enumerates."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._name = str(endpoint)
        device = endpoint.address
        if not os.path.exists(device):
            raise LinkError(f"cannot open {self._name}: {device} does not exist")
        try:
            self._port = serial.Serial(
                device, endpoint.port_or_baud, timeout=0, write_timeout=1.0, exclusive=True
            )
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"cannot open {self._name}: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        try:
            ready, _, _ = select.select([self._port.fileno()], [], [], max(timeout, 0.0))
            if not ready:
                return b""
            data = self._port.read(self._port.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self._name}: {exc}") from exc
        if not data:
            # select said readable but nothing came: the device went away (USB unplug).
            raise LinkError(f"{self._name}: device disconnected")
        return data

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self._name}: {exc}") from exc

    def close(self) -> None:
        self._port.close()


def open_transport(endpoint: Endpoint, timeout: float) -> Transport | DatagramTransport:
    """Open the transport an endpoint names; LinkError says why it cannot be opened."""
    if endpoint.kind == "tcp":
        return TcpTransport(endpoint, timeout)
    if endpoint.kind in ("udpin", "udpout"):
        return UdpTransport(endpoint)
    return SerialTransport(endpoint)
