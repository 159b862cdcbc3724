"""Byte transports under the MAVLink link: TCP, UDP and serial, each bounded in time.

pymavlink's own `mavfile` classes sleep, print and can block forever on a serial port, so
the bridge uses these thin adapters instead: `read(timeout)` never waits longer than asked,
and every failure is a `LinkError` that names the endpoint and the cause.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Protocol

import serial

from firmware_bridge.endpoint import Endpoint
from firmware_bridge.errors import LinkError

_READ_SIZE = 4096


class Transport(Protocol):
    """A byte pipe to the autopilot."""

    def read(self, timeout: float) -> bytes:
        """Bytes that arrived within `timeout` s (b"" if none); LinkError if the link broke."""
        ...

    def write(self, data: bytes) -> None: ...

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
    """UDP: listen and answer whoever spoke last (udpin), or send to a fixed peer (udpout)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._name = str(endpoint)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._peer: tuple[str, int] | None = None
        try:
            if endpoint.kind == "udpin":
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._sock.bind((endpoint.address, endpoint.port_or_baud))
            else:
                self._peer = (endpoint.address, endpoint.port_or_baud)
        except OSError as exc:
            self._sock.close()
            raise LinkError(f"cannot open {self._name}: {exc.strerror or exc}") from exc

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not ready:
            return b""
        try:
            data, addr = self._sock.recvfrom(65535)
        except OSError as exc:
            raise LinkError(f"{self._name}: {exc.strerror or exc}") from exc
        self._peer = addr
        return data

    def write(self, data: bytes) -> None:
        if self._peer is None:
            return  # udpin: nobody has spoken yet, so there is nobody to answer
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


def open_transport(endpoint: Endpoint, timeout: float) -> Transport:
    """Open the transport an endpoint names; LinkError says why it cannot be opened."""
    if endpoint.kind == "tcp":
        return TcpTransport(endpoint, timeout)
    if endpoint.kind in ("udpin", "udpout"):
        return UdpTransport(endpoint)
    return SerialTransport(endpoint)
