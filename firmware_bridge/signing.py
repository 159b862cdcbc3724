"""MAVLink 2 message signing between the companion and ArduPilot, sans-I/O.

With signing on, every frame carries a 13-byte signature block: the sender's link id, a
48-bit timestamp in 10 µs units since 2015-01-01 00:00 UTC, and the first 6 bytes of
SHA-256(secret | frame up to and including link id and timestamp)
(https://mavlink.io/en/guide/message_signing.html). A receiver keeps, per stream (link id,
system, component), the last timestamp it accepted and refuses anything not newer, so a
recorded frame cannot be replayed.

What ArduPilot does (libraries/GCS_MAVLink/GCS_Signing.cpp, and mavlink_signature_check /
mavlink_frame_char_buffer in the generated mavlink_helpers.h):

- `handle_setup_signing`: SETUP_SIGNING is handled from any link, and only while disarmed
  (armed it answers STATUSTEXT "ERROR: Won't setup signing when armed" and nothing else;
  there is no COMMAND_ACK for SETUP_SIGNING). It stores {magic, timestamp, key} in its
  persistent storage (StorageKeys; eeprom.bin on SITL), so the key survives reboots, and
  loads it on every MAVLink 2 link at once. An all-zero key with timestamp 0 switches
  signing off.
- `load_signing_key`: each link then signs everything it sends and starts its timestamp one
  minute past the stored one (the stored one is saved every 30 s and at each GPS time
  update), so that a reboot never reuses a timestamp; `update_signing_timestamp` raises it
  to GPS time.
- `accept_unsigned_callback`: once a key is set, unsigned and wrongly signed frames are
  dropped without an answer, except RADIO_STATUS and RADIO (injected by telemetry radios)
  and anything on channel 0, which ArduPilot takes for a secure link: USB on a flight
  controller, TCP 5760 (SERIAL0) on SITL. The companion therefore belongs on a telemetry
  port (TELEM2 = SERIAL2 in delivery-copter.parm); the USB port stays open to whoever holds
  the cable.
- `mavlink_signature_check`: the signature is checked first, then the stream: a new stream
  is accepted only if its timestamp is at most one minute older than the receiver's own,
  at most 16 streams are kept, and a known stream must move forward. Each accepted
  timestamp raises the receiver's own.

The bridge checks what it receives the same way (`check_signature`). It does not use
pymavlink's receive-side check, which records a stream's timestamp before it compares the
signature, so that one forged frame with a future timestamp would lock the autopilot's real
frames out as replays.

Timestamps: the companion starts from the later of its wall clock and the autopilot's GPS
time, never goes back within a link's life (reconnects included), and raises its own past
every timestamp it accepts from the autopilot, as ArduPilot does. Nothing is persisted: after
a restart the companion hears a signed message from the autopilot (the link waits for its
heartbeat) before it sends a command, and that timestamp is at or above every timestamp the
autopilot has accepted on that link. A link id is fixed per companion link (default
`DEFAULT_LINK_ID`), not drawn afresh per connection, because ArduPilot never forgets a
stream until it reboots and keeps at most 16.

Set up through `Vehicle.connect(..., signing_secret=secret)` or `vehicle.setup_signing(
secret)`; the secret is 32 bytes from the drone's key store.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.errors import SigningError
from firmware_bridge.exchange import OWN_COMPONENT, OWN_SYSTEM, RequestReply

SIGNING_EPOCH_UNIX_S = 1_420_070_400  # 2015-01-01 00:00:00 UTC
TICKS_PER_S = 100_000  # the signing timestamp counts 10 µs units
SECRET_LEN = 32
NEW_STREAM_WINDOW = 60 * TICKS_PER_S  # mavlink_signature_check: "not more than 1 minute old"
MAX_STREAMS = 16  # MAVLINK_MAX_SIGNING_STREAMS
DEFAULT_LINK_ID = 0
#: What ArduPilot's accept_unsigned_callback lets through unsigned: a telemetry radio's own
#: status reports, which the radio inserts into the stream and cannot sign.
ACCEPTED_UNSIGNED_IDS = frozenset(
    {mavlink.MAVLINK_MSG_ID_RADIO_STATUS, mavlink.MAVLINK_MSG_ID_RADIO}
)

# Verdicts of `check_signature`: the first two let a message through.
SIGNED = "signed"
ACCEPTED_UNSIGNED = "accepted-unsigned"
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad-signature"
REPLAY = "replay"
OLD_TIMESTAMP = "old-timestamp"
TOO_MANY_STREAMS = "too-many-streams"
ADMITTED = frozenset({SIGNED, ACCEPTED_UNSIGNED})

#: ArduPilot's STATUSTEXTs when it will not take a key (GCS_Signing.cpp handle_setup_signing).
REFUSALS = ("ERROR: Won't setup signing", "ERROR: Failed to save signing key")

_V2_MAGIC = 0xFD
_SIGNATURE_BLOCK_LEN = 13
_MIN_SIGNED_LEN = 10 + 2 + _SIGNATURE_BLOCK_LEN  # header, checksum, signature block
_TAG_LEN = 6


def signing_timestamp(unix_s: float) -> int:
    """A signing timestamp (10 µs units since 2015-01-01 UTC) for Unix time `unix_s`; 0 for a
    clock set before 2015 (a Raspberry Pi without RTC before NTP), never negative."""
    return max(0, int((unix_s - SIGNING_EPOCH_UNIX_S) * TICKS_PER_S))


def check_secret(secret: object) -> bytes:
    """The secret as bytes, or SigningError naming what is wrong with it."""
    if not isinstance(secret, bytes | bytearray):
        raise SigningError(f"signing secret must be bytes, got {type(secret).__name__}")
    if len(secret) != SECRET_LEN:
        raise SigningError(f"signing secret must be {SECRET_LEN} bytes, got {len(secret)}")
    if not any(secret):
        raise SigningError(
            "signing secret is all zero bytes: ArduPilot takes an all-zero key as "
            "'switch signing off' (GCS_Signing.cpp load_signing_key)"
        )
    return bytes(secret)


@dataclass(frozen=True)
class Signature:
    """The signature block of a signed MAVLink 2 frame."""

    link_id: int
    timestamp: int
    tag: bytes


def signature_of(msg: MAVLinkMessage) -> Signature | None:
    """The signature block of `msg` as it came off the wire; None if it is unsigned (a
    MAVLink 1 frame, or a MAVLink 2 frame without the signed flag)."""
    frame = msg.get_msgbuf()
    if len(frame) < _MIN_SIGNED_LEN or frame[0] != _V2_MAGIC:
        return None
    if not frame[2] & mavlink.MAVLINK_IFLAG_SIGNED:
        return None
    block = frame[-_SIGNATURE_BLOCK_LEN:]
    return Signature(block[0], int.from_bytes(block[1:7], "little"), bytes(block[7:]))


def signature_valid(secret: bytes, msg: MAVLinkMessage) -> bool:
    """Whether `msg` is signed, and its tag is right for `secret` (timestamps not checked)."""
    signature = signature_of(msg)
    if signature is None:
        return False
    expected = hashlib.sha256(secret + bytes(msg.get_msgbuf()[:-_TAG_LEN])).digest()[:_TAG_LEN]
    return hmac.compare_digest(expected, signature.tag)


def check_signature(signing: mavlink.MAVLinkSigning, msg: MAVLinkMessage) -> str:
    """The verdict on one received message under `signing` (pymavlink's signing state of the
    link: secret, own timestamp, and last timestamp per stream, which this updates).

    `SIGNED` and `ACCEPTED_UNSIGNED` let it through; any other verdict names why it must be
    dropped. The order is mavlink_signature_check's: the tag first, so that a forged frame
    changes no state; then the stream's timestamp. An accepted timestamp raises the link's
    own to one past it, so that the next frame the companion sends is newer than anything
    the autopilot has accepted on this link, even after a restart that lost count."""
    verdict = _verify(signing, msg)
    if verdict != SIGNED and msg.get_msgId() in ACCEPTED_UNSIGNED_IDS:
        # accept_unsigned_callback is asked whenever the check fails, whatever the reason.
        return ACCEPTED_UNSIGNED
    return verdict


def _verify(signing: mavlink.MAVLinkSigning, msg: MAVLinkMessage) -> str:
    assert signing.secret_key is not None, "check_signature needs a secret"
    signature = signature_of(msg)
    if signature is None:
        return UNSIGNED
    if not signature_valid(signing.secret_key, msg):
        return BAD_SIGNATURE
    stream = (signature.link_id, msg.get_srcSystem(), msg.get_srcComponent())
    last = signing.stream_timestamps.get(stream)
    if last is None:
        if len(signing.stream_timestamps) >= MAX_STREAMS:
            return TOO_MANY_STREAMS
        if signature.timestamp + NEW_STREAM_WINDOW < signing.timestamp:
            return OLD_TIMESTAMP
    elif signature.timestamp <= last:
        return REPLAY
    signing.stream_timestamps[stream] = signature.timestamp
    signing.timestamp = max(signing.timestamp, signature.timestamp + 1)
    return SIGNED


class SigningSetup(RequestReply[None]):
    """SETUP_SIGNING, confirmed by the autopilot's first message signed with the new key.

    ArduPilot acknowledges SETUP_SIGNING with nothing: it signs everything it sends from then
    on, so a message from it whose tag is right for the new key is the answer. It is
    re-sent with the same initial timestamp on silence (a lost frame on a radio link). An
    autopilot that refuses says so in a STATUSTEXT (`REFUSALS`); one that already holds
    another key drops the request unanswered, like any frame not signed with its key."""

    def __init__(
        self,
        secret: bytes,
        initial_timestamp: int,
        target_system: int,
        target_component: int,
        *,
        timeout: float = 1.5,
        retries: int = 3,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(
            target_system,
            target_component,
            timeout=timeout,
            retries=retries,
            own_system=own_system,
            own_component=own_component,
        )
        self.secret = check_secret(secret)
        self.initial_timestamp = initial_timestamp

    def _request(self) -> MAVLinkMessage:
        return mavlink.MAVLink_setup_signing_message(
            self.target_system, self.target_component, list(self.secret), self.initial_timestamp
        )

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        if msg.get_type() == "STATUSTEXT" and msg.text.startswith(REFUSALS):
            self._fail(SigningError(f"the autopilot refused SETUP_SIGNING: {msg.text}"))
        elif signature_valid(self.secret, msg):
            self._succeed(None)
        return []

    def _what(self) -> str:
        return "SETUP_SIGNING: a message signed with the new key"


class SigningResume(SigningSetup):
    """Signing with the key an armed autopilot already holds, confirmed by its first
    message signed with it: what a companion restarted in the air does.

    Armed, ArduPilot ignores SETUP_SIGNING, but it keeps the key it was given in its
    storage, so a companion that gave it that key before (its drone key store's secret)
    signs with it again and nothing is set. The request is a HEARTBEAT, signed like
    everything the link sends, re-sent on silence. An autopilot whose messages come unsigned
    holds no key, one whose messages are signed with another key holds another: both fail at
    once, since an armed autopilot cannot be given ours."""

    def _request(self) -> MAVLinkMessage:
        return mavlink.MAVLink_heartbeat_message(
            mavlink.MAV_TYPE_ONBOARD_CONTROLLER,
            mavlink.MAV_AUTOPILOT_INVALID,
            0,
            0,
            mavlink.MAV_STATE_ACTIVE,
            3,
        )

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        if msg.get_type() == "BAD_DATA" or msg.get_msgId() in ACCEPTED_UNSIGNED_IDS:
            return []
        if signature_valid(self.secret, msg):
            self._succeed(None)
        elif signature_of(msg) is None:
            self._fail(SigningError(f"{_ARMED}; it sends unsigned messages: it holds no key"))
        else:
            self._fail(SigningError(f"{_ARMED}; it signs with another key than this one"))
        return []

    def _what(self) -> str:
        return "a message from the armed autopilot signed with the key it holds"


_ARMED = (
    "MAVLink signing is only set up while the vehicle is disarmed, and it is armed "
    "(ArduPilot ignores SETUP_SIGNING when armed); disarm first"
)
