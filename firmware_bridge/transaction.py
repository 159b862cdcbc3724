"""The shape every sans-I/O protocol core of the bridge has.

A transaction is a state machine driven by three calls: `start(now)`, `receive(msg, now)`
and `tick(now)`. Each returns the MAVLink messages to send; none does I/O or sleeps.
`deadline` says when `tick` must be called next (for timeouts and retransmission). When
`finished` is true, `result()` returns the outcome or raises the protocol's error. One
runner (`link.MavLink.run`) drives all of them, so acknowledgements, retries and timeouts
live in the cores and the transport stays thin.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from firmware_bridge.dialect import MAVLinkMessage

T_co = TypeVar("T_co", covariant=True)


class Transaction(Protocol, Generic[T_co]):
    """A protocol exchange with the autopilot, driven by messages and clock readings."""

    @property
    def finished(self) -> bool: ...

    @property
    def deadline(self) -> float | None: ...

    def start(self, now: float) -> list[MAVLinkMessage]: ...

    def receive(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]: ...

    def tick(self, now: float) -> list[MAVLinkMessage]: ...

    def result(self) -> T_co: ...
