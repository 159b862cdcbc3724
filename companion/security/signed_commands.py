"""Signed operator commands: what the ground service sends a drone in flight, and their check.

A command is one canonical JSON object (see `encoding`), version 1:

    {"cmd": {"command": "hold", "drone_id": "skycourier-1", "issued_at": 1767225600,
             "nonce": "<16 bytes>", "order_id": "o-7", "valid_for_s": 60},
     "sig": "<64 bytes>", "v": 1}

`command` is one of `COMMANDS`: abort and return (give up and fly home, RTL), land (land
where it is), hold (stop where it is), resume (go on after a hold). `order_id` is optional:
the order the command concerns, so that a command meant for one delivery never acts on the
next one. `issued_at` is Unix seconds (UTC) when it was signed and `valid_for_s` how long it
may be acted on, at most `MAX_VALID_FOR_S`: a command is about the flight as it is now, so a
captured one cannot be held back and sent later. The nonce (16 random bytes, unpadded
base64url like every binary field) names the command in answers and the audit trail.

Signing is the orders' (`companion.security.orders`): the dispatcher's Ed25519 key over
``SIGNATURE_DOMAIN`` followed by the canonical bytes of the object without "sig", and only
bytes that are exactly the canonical encoding are accepted. The domain differs from the
orders', so no signature made for one kind of message verifies as the other.

`verify_command` refuses, naming the reason (`CommandError.reason`): "malformed" (too large,
not canonical JSON, a missing, extra or out-of-range field), "version", "unsigned",
"signature", "wrong-drone", "expired", "not-yet-valid" (issued more than the orders'
`CLOCK_SKEW_S` ahead of the drone's clock), "replay" (its nonce was accepted before: kept
in a `NonceStore`, on disk, until a day after the command expired) and "nonce-store" (the
store cannot be read or written: refusing is the safe side). The form is checked first, as
it must be to find the signed bytes, but nothing the payload says is acted on or believed
before its signature verifies.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from companion.security.encoding import (
    EncodingError,
    b64url,
    canonical_json,
    from_b64url,
    loads_strict,
)
from companion.security.keys import DRONE_ID_PATTERN
from companion.security.orders import (
    CLOCK_SKEW_S,
    NONCE_BYTES,
    ORDER_ID_PATTERN,
    NonceStore,
    OrderError,
)

VERSION = 1
SIGNATURE_DOMAIN = b"skycourier/command-signature\x00"
COMMANDS = ("abort", "return", "hold", "resume", "land")
#: The longest a command may be acted on after it was signed.
MAX_VALID_FOR_S = 120
DEFAULT_VALID_FOR_S = 60
#: A command is about 250 bytes; anything over this is refused before it is parsed.
MAX_COMMAND_BYTES = 1024
_MAX_TIME = 2**40
_BODY_FIELDS = {"command", "drone_id", "issued_at", "valid_for_s", "nonce"}
_OPTIONAL_FIELDS = {"order_id"}

REASONS = (
    "malformed",
    "version",
    "unsigned",
    "signature",
    "wrong-drone",
    "expired",
    "not-yet-valid",
    "replay",
    "nonce-store",
)


class CommandError(Exception):
    """A command that is refused: `reason` is one of `REASONS`, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"command refused ({reason}): {message}")


@dataclass(frozen=True)
class SignedCommand:
    """A decoded command; `digest` is SHA-256 (hex) of the bytes as received."""

    command: str
    drone_id: str
    issued_at: int
    valid_for_s: int
    nonce: bytes
    order_id: str | None
    digest: str = field(compare=False)

    @property
    def expires(self) -> int:
        """Unix seconds from which the command is refused as expired."""
        return self.issued_at + self.valid_for_s

    @property
    def command_id(self) -> str:
        """The nonce as text: how answers and the audit trail name the command."""
        return b64url(self.nonce)

    def summary(self) -> dict[str, Any]:
        """Every field, as plain JSON data."""
        return {
            "v": VERSION,
            "command": self.command,
            "drone_id": self.drone_id,
            "order_id": self.order_id,
            "issued_at": self.issued_at,
            "valid_for_s": self.valid_for_s,
            "command_id": self.command_id,
            "digest": self.digest,
        }


def _malformed(message: str) -> CommandError:
    return CommandError("malformed", message)


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body[name]
    if type(value) is not int or not low <= value <= high:
        raise _malformed(f"cmd.{name}: must be an integer in [{low}, {high}], got {value!r:.40}")
    return value


def _text(body: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = body[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _malformed(f"cmd.{name}: must match {pattern.pattern}, got {value!r:.80}")
    return value


def _parse_body(body: Any, digest: str) -> SignedCommand:
    """The command in a decoded "cmd" object; CommandError("malformed") naming the field."""
    if not isinstance(body, dict):
        raise _malformed("cmd: must be an object")
    missing = _BODY_FIELDS - set(body)
    if missing:
        raise _malformed(f"cmd: missing {', '.join(sorted(missing))}")
    extra = set(body) - _BODY_FIELDS - _OPTIONAL_FIELDS
    if extra:
        raise _malformed(f"cmd: unknown field(s) {', '.join(sorted(extra))}")
    command = body["command"]
    if not isinstance(command, str) or command not in COMMANDS:
        raise _malformed(f"cmd.command: must be one of {', '.join(COMMANDS)}, got {command!r:.40}")
    try:
        nonce = from_b64url(body["nonce"], size=NONCE_BYTES)
    except EncodingError as exc:
        raise _malformed(f"cmd.nonce: {exc}") from None
    return SignedCommand(
        command=command,
        drone_id=_text(body, "drone_id", DRONE_ID_PATTERN),
        issued_at=_int(body, "issued_at", 0, _MAX_TIME),
        valid_for_s=_int(body, "valid_for_s", 1, MAX_VALID_FOR_S),
        nonce=nonce,
        order_id=_text(body, "order_id", ORDER_ID_PATTERN) if "order_id" in body else None,
        digest=digest,
    )


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return SIGNATURE_DOMAIN + canonical_json({"cmd": body, "v": VERSION})


def decode_command(blob: bytes) -> tuple[SignedCommand, bytes, bytes]:
    """(command, signed bytes, signature) from `blob`, checking its form but not its
    signature; CommandError "malformed", "version" or "unsigned" otherwise. Anything at all
    may be given: no other exception escapes."""
    if not isinstance(blob, bytes | bytearray):
        raise _malformed(f"a command is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) > MAX_COMMAND_BYTES:
        raise _malformed(f"{len(blob)} bytes, over the {MAX_COMMAND_BYTES}-byte limit")
    try:
        doc = loads_strict(blob, allow_floats=False)
    except EncodingError as exc:
        raise _malformed(str(exc)) from None
    if not isinstance(doc, dict):
        raise _malformed("a command is a JSON object")
    if "v" not in doc:
        raise _malformed('no version ("v")')
    if type(doc["v"]) is not int or doc["v"] != VERSION:
        raise CommandError(
            "version", f"version {doc['v']!r:.20} is not {VERSION}, the one this build reads"
        )
    if doc.get("sig") in (None, ""):
        raise CommandError("unsigned", "the command carries no signature")
    extra = set(doc) - {"v", "cmd", "sig"}
    if extra or "cmd" not in doc:
        raise _malformed('expected exactly "v", "cmd" and "sig" at the top level')
    if canonical_json(doc) != blob:
        raise _malformed("not in canonical form (sorted keys, no spaces, ASCII)")
    try:
        signature = from_b64url(doc["sig"], size=64)
    except EncodingError as exc:
        raise _malformed(f"sig: {exc}") from None
    command = _parse_body(doc["cmd"], hashlib.sha256(blob).hexdigest())
    return command, _signed_bytes(doc["cmd"]), signature


def sign_command(
    signing_key: Ed25519PrivateKey,
    *,
    drone_id: str,
    command: str,
    issued_at: int,
    valid_for_s: int = DEFAULT_VALID_FOR_S,
    order_id: str | None = None,
) -> bytes:
    """A signed, canonical command for `drone_id` (the ground side's maker). Bad arguments
    are a ValueError naming the field."""
    body: dict[str, Any] = {
        "command": command,
        "drone_id": drone_id,
        "issued_at": issued_at,
        "valid_for_s": valid_for_s,
        "nonce": b64url(os.urandom(NONCE_BYTES)),
    }
    if order_id is not None:
        body["order_id"] = order_id
    try:
        _parse_body(body, "")
    except CommandError as exc:
        raise ValueError(exc.message) from None
    signature = signing_key.sign(_signed_bytes(body))
    return canonical_json({"cmd": body, "sig": b64url(signature), "v": VERSION})


def verify_command(
    blob: bytes,
    *,
    dispatcher_public: Ed25519PublicKey,
    drone_id: str,
    now: float,
    nonces: NonceStore,
) -> SignedCommand:
    """The command in `blob` if `drone_id` may act on it at `now` (Unix seconds); its nonce
    is then recorded in `nonces` (durably), so it is acted on once. Otherwise CommandError
    with the reason; the checks run in the order of the module docstring's list."""
    command, signed, signature = decode_command(blob)
    try:
        dispatcher_public.verify(signature, signed)
    except InvalidSignature:
        raise CommandError("signature", "the dispatcher's signature does not verify") from None
    if command.drone_id != drone_id:
        raise CommandError(
            "wrong-drone", f"addressed to drone {command.drone_id!r}, this is {drone_id!r}"
        )
    if now >= command.expires:
        raise CommandError(
            "expired", f"valid until {command.expires}, {now - command.expires:.0f} s ago"
        )
    if now < command.issued_at - CLOCK_SKEW_S:
        raise CommandError(
            "not-yet-valid",
            f"issued at {command.issued_at}, {command.issued_at - now:.0f} s ahead of this "
            "drone's clock: check the clocks",
        )
    try:
        fresh = nonces.remember(command.nonce, command.expires, now)
    except OrderError as exc:  # the store cannot be written
        raise CommandError("nonce-store", exc.message) from None
    if not fresh:
        raise CommandError("replay", f"command {command.command_id} was accepted before")
    return command
