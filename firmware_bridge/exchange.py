"""Bookkeeping shared by the sans-I/O protocol cores (see `transaction.Transaction`).

Every core talks to one autopilot component and must ignore the rest of the traffic on
the link: other vehicles, other components of ours (a camera, a gimbal), and replies meant
for another ground station. `Exchange` does that filtering once, keeps the outcome, and
lets each core describe only its own protocol. `RequestReply` adds the common
"send, wait, re-send on timeout, give up" loop for exchanges of one request and one reply.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.errors import BridgeError, ProtocolTimeout

T = TypeVar("T")

OWN_SYSTEM = 1
OWN_COMPONENT = mavlink.MAV_COMP_ID_ONBOARD_COMPUTER


class Exchange(Generic[T]):
    """A transaction with the autopilot component (`target_system`, `target_component`).

    Subclasses implement `start`, `_on_message` and `_on_deadline`, and end the exchange
    with `_succeed` or `_fail`. A `target_component` of 0 accepts replies from any component
    of the target system (for callers that broadcast to the whole vehicle).
    """

    def __init__(
        self,
        target_system: int,
        target_component: int,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        self.target_system = target_system
        self.target_component = target_component
        self.own_system = own_system
        self.own_component = own_component
        self._deadline: float | None = None
        self._finished = False
        self._value: T | None = None
        self._error: BridgeError | None = None

    @property
    def finished(self) -> bool:
        """True once `result()` has an outcome; later messages and ticks are ignored."""
        return self._finished

    @property
    def deadline(self) -> float | None:
        """Clock reading at which `tick` must next be called; None when nothing is pending."""
        return self._deadline

    def start(self, now: float) -> list[MAVLinkMessage]:
        """Begin the exchange; returns the first messages to send."""
        raise NotImplementedError

    def receive(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        """Feed one decoded message from the link; returns the messages to send in reply."""
        if self._finished or not self.accepts(msg):
            return []
        return self._on_message(msg, now)

    def tick(self, now: float) -> list[MAVLinkMessage]:
        """Let time pass; acts only once `deadline` is reached."""
        if self._finished or self._deadline is None or now < self._deadline:
            return []
        return self._on_deadline(now)

    def result(self) -> T:
        """The outcome: the value, or the protocol's error raised."""
        if not self._finished:
            raise RuntimeError(f"{type(self).__name__} has not finished")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def accepts(self, msg: MAVLinkMessage) -> bool:
        """Whether `msg` comes from our autopilot and is addressed to us (or broadcast).

        MAVLink routing: a message with target fields is for that system/component only,
        0 meaning broadcast (https://mavlink.io/en/guide/routing.html).
        """
        if msg.get_srcSystem() != self.target_system:
            return False
        if self.target_component not in (0, msg.get_srcComponent()):
            return False
        target_system = getattr(msg, "target_system", 0)
        target_component = getattr(msg, "target_component", 0)
        return target_system in (0, self.own_system) and target_component in (
            0,
            self.own_component,
        )

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        raise NotImplementedError

    def _on_deadline(self, now: float) -> list[MAVLinkMessage]:
        raise NotImplementedError

    def _succeed(self, value: T) -> None:
        self._value = value
        self._finished = True
        self._deadline = None

    def _fail(self, error: BridgeError) -> None:
        self._error = error
        self._finished = True
        self._deadline = None


class RequestReply(Exchange[T]):
    """One request, re-sent every `timeout` seconds up to `retries` times, until answered.

    Subclasses build the request in `_request()` (called again for each re-send, so it may
    change, e.g. a confirmation counter), recognise the answer in `_on_message`, and name
    what was asked in `_what()` for the timeout message.
    """

    def __init__(
        self,
        target_system: int,
        target_component: int,
        *,
        timeout: float,
        retries: int,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(target_system, target_component, own_system, own_component)
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.timeout = timeout
        self.retries = retries
        self._sends = 0

    def start(self, now: float) -> list[MAVLinkMessage]:
        return self._send(now)

    def _send(self, now: float) -> list[MAVLinkMessage]:
        msg = self._request()
        self._sends += 1
        self._deadline = now + self.timeout
        return [msg]

    def _on_deadline(self, now: float) -> list[MAVLinkMessage]:
        if self._sends <= self.retries:
            return self._send(now)
        self._fail(
            ProtocolTimeout(
                f"{self._what()}: no answer after {self._sends} tries, {self.timeout:g} s each"
            )
        )
        return []

    def _request(self) -> MAVLinkMessage:
        raise NotImplementedError

    def _what(self) -> str:
        raise NotImplementedError
