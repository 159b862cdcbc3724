"""Test helpers for the sans-I/O MAVLink cores: real messages and scripted exchanges.

Every message a test hands to a core, and every message a core sends, goes through the
wire format here: packed by one `mavlink.MAVLink` object and decoded by another. So the
messages carry real headers (source system/component), and a test also proves that what
the core sends can be packed at all.

A test reads like the exchange it checks::

    sent = drive(core, [ap("MISSION_REQUEST_INT", seq=0), 1.6, ap("MISSION_ACK")])

where a message is delivered from the autopilot at the current time and a number lets that
many seconds pass, ticking the core at each deadline on the way, as the runner does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import strategies as st

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.transaction import Transaction

AUTOPILOT = (1, 1)
"""(system, component) of the autopilot the cores talk to in tests."""
OWN = (1, mavlink.MAV_COMP_ID_ONBOARD_COMPUTER)
"""(system, component) of the companion computer: the cores' defaults."""


def message_class(name: str) -> type[MAVLinkMessage]:
    """pymavlink's class for message `name`, e.g. "COMMAND_ACK"."""
    return getattr(mavlink, f"MAVLink_{name.lower()}_message")


def over_the_wire(msg: MAVLinkMessage, src: tuple[int, int]) -> MAVLinkMessage:
    """`msg` packed as sent by `src` and decoded again: the copy a receiver would get."""
    sender = mavlink.MAVLink(None, srcSystem=src[0], srcComponent=src[1])
    return mavlink.MAVLink(None).decode(bytearray(msg.pack(sender)))


def _default(field: str, ftype: str, length: int) -> Any:
    if field == "target_system":
        return OWN[0]
    if field == "target_component":
        return OWN[1]
    if ftype == "char":
        return b""
    return [0] * length if length else 0


def ap(name: str, *, src: tuple[int, int] = AUTOPILOT, **fields: Any) -> MAVLinkMessage:
    """Message `name` as the autopilot sends it, with `fields` given and the rest zero.

    Targets default to us (`OWN`); char fields may be given as str.
    """
    cls = message_class(name)
    lengths = dict(zip(cls.ordered_fieldnames, cls.array_lengths, strict=True))
    values = {}
    for field, ftype in zip(cls.fieldnames, cls.fieldtypes, strict=True):
        value = fields.pop(field, None)
        if value is None:
            value = _default(field, ftype, lengths[field])
        elif isinstance(value, str):
            value = value.encode("ascii")
        values[field] = value
    if fields:
        raise TypeError(f"{name} has no fields {sorted(fields)}")
    return over_the_wire(cls(**values), src)


def raw_frame(msgid: int, payload: bytes, src: tuple[int, int] = AUTOPILOT, seq: int = 0) -> bytes:
    """A MAVLink 2 frame with any payload and a valid CRC, so that it decodes.

    Lets a test feed the decoder field values no constructor would build (NaN, bytes that
    are not ASCII, truncated payloads), the way a confused or hostile peer could.
    """
    header = struct.pack(
        "<BBBBBBBHB", 0xFD, len(payload), 0, 0, seq, src[0], src[1], msgid & 0xFFFF, msgid >> 16
    )
    crc = mavlink.x25crc(header[1:] + payload)
    crc.accumulate(bytes([mavlink.mavlink_map[msgid].crc_extra]))
    return header + payload + struct.pack("<H", crc.crc)


def decode_stream(data: bytes) -> list[MAVLinkMessage]:
    """Every message pymavlink decodes from `data`, skipping what it rejects.

    Decode errors are the runner's business; this does what it does with them, so that a
    test can check that the cores survive whatever does decode.
    """
    parser = mavlink.MAVLink(None)
    parser.robust_parsing = True
    decoded = []
    for byte in data:
        try:
            decoded.extend(parser.parse_buffer(bytes([byte])) or [])
        except mavlink.MAVError:
            continue
    return decoded


class Driver:
    """Runs a core the way the runner does: a clock, incoming messages, deadline ticks.

    `sent` collects every message the core sent, decoded from the wire with our header;
    `received` the messages delivered to it while it was unfinished, so that a test can
    tell which message ended the exchange (a core only ever succeeds on a message).
    """

    def __init__(self, core: Transaction[Any], now: float = 0.0) -> None:
        self.core = core
        self.now = now
        self.sent: list[MAVLinkMessage] = []
        self.received: list[MAVLinkMessage] = []
        self.ticks = 0

    def _out(self, msgs: Iterable[MAVLinkMessage]) -> list[MAVLinkMessage]:
        decoded = [over_the_wire(m, OWN) for m in msgs]
        self.sent.extend(decoded)
        return decoded

    def start(self) -> list[MAVLinkMessage]:
        return self._out(self.core.start(self.now))

    def feed(self, msg: MAVLinkMessage) -> list[MAVLinkMessage]:
        if not self.core.finished:
            self.received.append(msg)
        return self._out(self.core.receive(msg, self.now))

    def wait(self, seconds: float) -> list[MAVLinkMessage]:
        """Let `seconds` pass, ticking at every deadline reached on the way."""
        end = self.now + seconds
        out = []
        while not self.core.finished and self.core.deadline is not None:
            deadline = self.core.deadline
            if deadline > end:
                break
            self.now = max(self.now, deadline)
            self.ticks += 1
            out += self._out(self.core.tick(self.now))
            assert (
                self.core.finished or self.core.deadline is None or (self.core.deadline > self.now)
            ), "tick at the deadline left the deadline where it was"
        self.now = max(self.now, end)
        return out

    def play(self, script: Sequence[MAVLinkMessage | float]) -> list[MAVLinkMessage]:
        """Deliver each message of `script` now; a number lets that many seconds pass."""
        out = []
        for step in script:
            if isinstance(step, int | float):
                out += self.wait(step)
            else:
                out += self.feed(step)
        return out

    def run_out(self, max_ticks: int) -> list[MAVLinkMessage]:
        """Let time pass with the autopilot silent until the core finishes.

        Fails the test if that takes more than `max_ticks` ticks, or the core stops asking
        for ticks without finishing (it would hang its caller).
        """
        first = self.ticks
        out = []
        while not self.core.finished:
            assert self.core.deadline is not None, "unfinished core without a deadline"
            assert self.ticks - first < max_ticks, f"not finished after {max_ticks} ticks"
            out += self.wait(self.core.deadline - self.now)
        return out


def drive(core: Transaction[Any], script: Sequence[MAVLinkMessage | float]) -> list[MAVLinkMessage]:
    """Start `core` at t=0 and play `script`; returns every message the core sent.

    A message in the script is delivered at the current time; a number lets that many
    seconds pass (ticking at each deadline on the way).
    """
    driver = Driver(core)
    driver.start()
    driver.play(script)
    return driver.sent


def types(msgs: Iterable[MAVLinkMessage]) -> list[str]:
    """Message type names, for comparing a core's output with the expected exchange."""
    return [m.get_type() for m in msgs]


# --- hypothesis strategies: well-formed messages with arbitrary field values ---------

_INT_BOUNDS = {
    "uint8_t": (0, 2**8 - 1),
    "int8_t": (-(2**7), 2**7 - 1),
    "uint16_t": (0, 2**16 - 1),
    "int16_t": (-(2**15), 2**15 - 1),
    "uint32_t": (0, 2**32 - 1),
    "int32_t": (-(2**31), 2**31 - 1),
    "uint64_t": (0, 2**64 - 1),
    "int64_t": (-(2**63), 2**63 - 1),
}
_PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)

SOURCES = st.sampled_from([AUTOPILOT, AUTOPILOT, AUTOPILOT, (2, 1), (1, 2), (255, 190)])
"""Mostly the autopilot, sometimes another vehicle or component or a ground station."""
TARGET_SYSTEMS = st.sampled_from([OWN[0], OWN[0], 0, 2])
TARGET_COMPONENTS = st.sampled_from([OWN[1], OWN[1], 0, 1, 190])


def _field_strategy(ftype: str, length: int) -> st.SearchStrategy[Any]:
    if ftype == "char":
        return st.text(_PRINTABLE, max_size=length).map(lambda s: s.encode("ascii"))
    if ftype in ("float", "double"):
        scalar: st.SearchStrategy[Any] = st.floats(width=32 if ftype == "float" else 64)
    else:
        low, high = _INT_BOUNDS[ftype]
        # Small values hit sequence numbers, enum values and indices that mean something.
        scalar = st.one_of(st.integers(max(low, 0), min(high, 5)), st.integers(low, high))
    return st.lists(scalar, min_size=length, max_size=length) if length else scalar


def messages(
    name: str,
    *,
    src: st.SearchStrategy[tuple[int, int]] = SOURCES,
    **overrides: st.SearchStrategy[Any],
) -> st.SearchStrategy[MAVLinkMessage]:
    """Decoded `name` messages with random fields (`overrides` pin some) from `src`."""
    cls = message_class(name)
    lengths = dict(zip(cls.ordered_fieldnames, cls.array_lengths, strict=True))
    field_strategies = {
        "target_system": TARGET_SYSTEMS,
        "target_component": TARGET_COMPONENTS,
    }
    for field, ftype in zip(cls.fieldnames, cls.fieldtypes, strict=True):
        field_strategies.setdefault(field, _field_strategy(ftype, lengths[field]))
    field_strategies.update(overrides)
    fields_st = st.fixed_dictionaries({f: field_strategies[f] for f in cls.fieldnames})
    return st.builds(lambda values, sender: over_the_wire(cls(**values), sender), fields_st, src)


def addressed(name: str, **overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[MAVLinkMessage]:
    """Like `messages`, but from the autopilot and addressed to us (or broadcast).

    Random traffic rarely gets the addressing right, so without these a property test would
    almost never see an exchange succeed.
    """
    return messages(
        name,
        src=st.just(AUTOPILOT),
        target_system=st.sampled_from([OWN[0], OWN[0], 0]),
        target_component=st.sampled_from([OWN[1], OWN[1], 0]),
        **overrides,
    )


def _flatten(steps: list) -> list:
    flat: list = []
    for step in steps:
        flat.extend(step if isinstance(step, list) else [step])
    return flat


def scripts(*step_strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[list]:
    """Scripts for `drive`: the given messages (or lists of them: bursts played in a row)
    mixed with clock advances.

    Advances are mostly short (median under 0.4 s, at most 3 s), so that messages keep
    arriving while the exchange is still going on.
    """
    waits = st.floats(0.0, 1.0).map(lambda x: 3.0 * x**3)
    return st.lists(st.one_of(*step_strategies, waits), max_size=40).map(_flatten)


def raw_frames(names: Sequence[str]) -> st.SearchStrategy[bytes]:
    """Frames of the named messages with random payload bytes (valid CRC), and noise."""
    ids = [message_class(n).id for n in names]
    frame = st.builds(
        lambda msgid, payload, src: raw_frame(msgid, payload, src),
        st.sampled_from(ids),
        st.binary(max_size=60),
        SOURCES,
    )
    return st.lists(st.one_of(frame, st.binary(max_size=20)), max_size=20).map(b"".join)
