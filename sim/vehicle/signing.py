"""MAVLink 2 signing as ArduPilot enforces it on its links.

Written from ArduPilot's source, not from the bridge's (the emulator must not share the
driver's reading): libraries/GCS_MAVLink/GCS_Signing.cpp and mavlink_signature_check /
mavlink_frame_char_buffer in the generated mavlink_helpers.h
(modules/mavlink/pymavlink/generator/C/include_v2.0/).

- The key store (`handle_setup_signing`, `signing_key_save`/`signing_key_load`): a
  SETUP_SIGNING addressed to this vehicle is taken from any link, and only while disarmed
  (armed: STATUSTEXT "ERROR: Won't setup signing when armed" to that link, and nothing
  else). It is stored as {timestamp, key} and loaded at once on every link. On a link that
  already signs, the SETUP_SIGNING itself must pass the signature check like any message,
  so only a holder of the current key can change it. An all-zero key with timestamp 0
  switches signing off (`load_signing_key`).
- Each link's state (`load_signing_key`, mavlink_signing_t): link id = the channel number,
  timestamp = the stored one plus one minute, sign everything sent. Each frame sent takes
  the link's timestamp and advances it by one (mavlink_sign_packet).
- Received frames (mavlink_frame_char_buffer, mavlink_signature_check, and
  `accept_unsigned_callback`): with no key everything passes, signed or not. With a key, an
  unsigned or wrongly signed frame is dropped silently unless it is RADIO_STATUS or RADIO;
  a correctly signed one is dropped if its stream (system, component, link id) is new and
  its timestamp more than one minute behind the link's, if 16 streams are already known,
  or if the stream's timestamp does not move forward. The streams are shared by all links
  (GCS_MAVLINK::signing_streams is static) and never forgotten; an accepted timestamp
  raises the receiving link's own.
- GPS time (`update_signing_timestamp`, called by AP_RTC::set_utc_usec on each GPS fix
  update): every signing link's timestamp is raised to the GPS time in whole seconds, and
  the stored timestamp is saved (`save_signing_timestamp`).

Differences from ArduPilot, each because the built-in vehicle has no such part:
- ArduPilot also accepts anything unsigned on channel 0, which it takes for a secure link
  (USB on a flight controller, TCP 5760 on SITL). Every client of the built-in vehicle is a
  telemetry link: none is channel 0, so only RADIO_STATUS and RADIO pass unsigned.
- The key is stored for the vehicle's life, not across runs (there is no eeprom.bin); the
  periodic 30 s save is not modelled, the save at each GPS update keeps the stored
  timestamp current as it does in ArduPilot once the GPS has a fix.
- Links are clients: a client that connects later is a new link that loads the stored key
  then, as ArduPilot's links do at boot (GCS_MAVLINK::init).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from .dialect import MAVLinkMessage, mavlink

EPOCH_OFFSET_S = 1_420_070_400  # update_signing_timestamp: 1/1/1970 to 1/1/2015
TICKS_PER_S = 100 * 1000  # the timestamp counts 10 µs
LOAD_AHEAD = 60 * TICKS_PER_S  # load_signing_key: "1 minute past the last recorded"
NEW_STREAM_MAX_AGE = 6000 * 1000  # mavlink_signature_check: "not more than 1 minute old"
MAX_SIGNING_STREAMS = 16  # MAVLINK_MAX_SIGNING_STREAMS
ACCEPT_UNSIGNED = frozenset({mavlink.MAVLINK_MSG_ID_RADIO_STATUS, mavlink.MAVLINK_MSG_ID_RADIO})
ARMED_REFUSAL = "ERROR: Won't setup signing when armed"

_SIGNATURE_BLOCK_LEN = 13  # MAVLINK_SIGNATURE_BLOCK_LEN: link id, 6-byte timestamp, 6-byte tag
_MIN_SIGNED_LEN = 10 + 2 + _SIGNATURE_BLOCK_LEN  # header, checksum, signature


@dataclass
class StoredKey:
    """`struct SigningKey` in ArduPilot's storage (the magic only marks it as present)."""

    timestamp: int
    secret: bytes


@dataclass
class LinkSigning:
    """One link's mavlink_signing_t: what it signs with and its timestamp."""

    secret: bytes
    link_id: int
    timestamp: int


@dataclass
class Signing:
    """The vehicle's signing: its stored key, each link's state and the shared streams."""

    key: StoredKey | None = None
    links: dict[int, LinkSigning | None] = field(default_factory=dict)
    streams: dict[tuple[int, int, int], int] = field(default_factory=dict)
    #: Frames dropped, by reason ("unsigned", "bad-signature", "replay", "old-timestamp",
    #: "too-many-streams"): ArduPilot drops them without a word; tests read these.
    rejected: dict[str, int] = field(default_factory=dict)

    # ---- links ----------------------------------------------------------------------------
    def link_opened(self, link: int) -> None:
        """A link starts: it loads the stored key, if any (GCS_MAVLINK::init)."""
        self.links[link] = self._load(link)

    def link_closed(self, link: int) -> None:
        """A link is gone; the streams it carried are still remembered."""
        self.links.pop(link, None)

    def outgoing(self, link: int) -> LinkSigning | None:
        """What frames sent on `link` are signed with; None: unsigned. The caller advances
        `timestamp` by one per frame it signs (mavlink_sign_packet)."""
        return self.links.get(link)

    def _load(self, link: int) -> LinkSigning | None:
        """load_signing_key: None (no signing) without a key or with the all-zero one."""
        key = self.key
        if key is None or (key.timestamp == 0 and not any(key.secret)):
            return None
        return LinkSigning(key.secret, link & 0xFF, key.timestamp + LOAD_AHEAD)

    # ---- SETUP_SIGNING --------------------------------------------------------------------
    def setup(self, msg: MAVLinkMessage, armed: bool) -> str | None:
        """handle_setup_signing: store the key and load it on every link; the STATUSTEXT to
        send back to the sender's link if refused, else None."""
        if armed:
            return ARMED_REFUSAL
        self.key = StoredKey(msg.initial_timestamp, bytes(msg.secret_key))
        for link in self.links:
            self.links[link] = self._load(link)
        return None

    # ---- receiving ------------------------------------------------------------------------
    def accept(self, msg: MAVLinkMessage, link: int) -> bool:
        """Whether a frame received on `link` is handled at all (framing + signature check,
        before routing); a dropped one is counted in `rejected`."""
        if msg.get_type() == "BAD_DATA":
            return False  # never a frame: ArduPilot's parser yields nothing for it
        state = self.links.get(link)
        if state is None:
            return True  # status->signing == NULL: no check, signed or not
        reason = self._check(state, msg)
        if reason is None:
            return True
        if msg.get_msgId() in ACCEPT_UNSIGNED:
            # accept_unsigned_callback, asked whenever the check fails (channel 0 is never
            # one of ours: see the module docstring)
            return True
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return False

    def _check(self, state: LinkSigning, msg: MAVLinkMessage) -> str | None:
        """mavlink_signature_check on one frame; None when it passes, else the reason."""
        frame = bytes(msg.get_msgbuf())
        if (
            len(frame) < _MIN_SIGNED_LEN
            or frame[0] != 0xFD  # a MAVLink 1 frame cannot be signed
            or not frame[2] & mavlink.MAVLINK_IFLAG_SIGNED
        ):
            return "unsigned"
        tag = hashlib.sha256(state.secret + frame[:-6]).digest()[:6]
        if not hmac.compare_digest(tag, frame[-6:]):
            return "bad-signature"
        block = frame[-_SIGNATURE_BLOCK_LEN:]
        link_id = block[0]
        timestamp = int.from_bytes(block[1:7], "little")
        stream = (msg.get_srcSystem(), msg.get_srcComponent(), link_id)
        last = self.streams.get(stream)
        if last is None:
            if len(self.streams) >= MAX_SIGNING_STREAMS:
                return "too-many-streams"
            if timestamp + NEW_STREAM_MAX_AGE < state.timestamp:
                return "old-timestamp"
        elif timestamp <= last:
            return "replay"
        self.streams[stream] = timestamp
        if timestamp > state.timestamp:
            state.timestamp = timestamp  # "our next timestamp must be at least this timestamp"
        return None

    # ---- GPS time -------------------------------------------------------------------------
    def update_timestamp(self, utc_usec: int) -> None:
        """update_signing_timestamp: raise every signing link to GPS time (whole seconds since
        2015, in 10 µs units), then save the highest link timestamp with the key."""
        seconds = utc_usec // 1_000_000
        if seconds > EPOCH_OFFSET_S:
            seconds -= EPOCH_OFFSET_S
        timestamp = seconds * TICKS_PER_S
        for state in self.links.values():
            if state is not None and state.timestamp < timestamp:
                state.timestamp = timestamp
        if self.key is not None:
            newest = max((s.timestamp for s in self.links.values() if s), default=0)
            self.key.timestamp = max(self.key.timestamp, newest)
