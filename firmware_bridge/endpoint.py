"""Connection strings for the autopilot link, parsed once with errors that name the problem.

Accepted forms (the same spellings MAVProxy and mavutil users know):

- ``tcp:HOST:PORT`` — connect to a TCP server (ArduPilot SITL listens on 5760);
- ``udp:HOST:PORT`` / ``udpin:HOST:PORT`` — listen for UDP datagrams; the link locks onto the
  address the autopilot's heartbeat comes from and ignores every other sender;
- ``udpout:HOST:PORT`` — send UDP datagrams to HOST:PORT;
- ``serial:DEVICE:BAUD`` or plain ``DEVICE:BAUD`` (``/dev/ttyAMA0:921600``) — a serial port. Prefer
  ``/dev/serial/by-id/...`` paths: they survive USB re-enumeration, ``/dev/ttyACM0`` may not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STANDARD_BAUD_RATES = (
    9600,
    19200,
    38400,
    57600,
    115200,
    230400,
    460800,
    500000,
    921600,
    1000000,
    1500000,
    2000000,
)

Kind = Literal["tcp", "udpin", "udpout", "serial"]


class EndpointError(ValueError):
    """A connection string that cannot name a link; the message says what is wrong."""


@dataclass(frozen=True)
class Endpoint:
    """Where the autopilot is: a TCP/UDP address or a serial device and baud rate."""

    kind: Kind
    address: str
    port_or_baud: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}:{self.port_or_baud}"


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise EndpointError(f"{spec!r}: port must be a number from 1 to 65535, got {text!r}")
    return int(text)


def parse_endpoint(spec: str) -> Endpoint:
    """Parse a connection string into an `Endpoint`, or raise `EndpointError` saying why not."""
    text = spec.strip()
    if not text:
        raise EndpointError("empty connection string: expected e.g. tcp:127.0.0.1:5760")
    scheme, sep, rest = text.partition(":")
    if text.startswith("/") or scheme == "serial":
        body = text if text.startswith("/") else rest
        device, sep2, baud_text = body.rpartition(":")
        if not sep2 or not device:
            raise EndpointError(
                f"{spec!r}: a serial link needs DEVICE:BAUD, e.g. /dev/ttyAMA0:921600"
            )
        if not device.startswith("/"):
            raise EndpointError(f"{spec!r}: serial device must be an absolute path, got {device!r}")
        if not baud_text.isdigit() or int(baud_text) not in STANDARD_BAUD_RATES:
            rates = ", ".join(str(b) for b in STANDARD_BAUD_RATES)
            raise EndpointError(f"{spec!r}: baud rate {baud_text!r} is not one of {rates}")
        return Endpoint("serial", device, int(baud_text))
    kinds: dict[str, Kind] = {"tcp": "tcp", "udp": "udpin", "udpin": "udpin", "udpout": "udpout"}
    if scheme not in kinds or not sep:
        raise EndpointError(
            f"{spec!r}: unknown link type {scheme!r}; use tcp:HOST:PORT, udp:HOST:PORT, "
            "udpout:HOST:PORT or serial:DEVICE:BAUD"
        )
    host, sep2, port_text = rest.rpartition(":")
    if not sep2 or not host:
        raise EndpointError(f"{spec!r}: expected {scheme}:HOST:PORT")
    return Endpoint(kinds[scheme], host, _port(port_text, spec))
