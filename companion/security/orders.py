"""Signed delivery orders, the recipient template sealed inside them, and their verification.

An order is one canonical JSON object (see `encoding`), version 1:

    {"order": {"drone_id": "skycourier-1",
               "drop": {"alt_cm": 0, "lat_e7": -353600710, "lon_e7": 1491691380},
               "expires": 1767229200, "nonce": "<16 bytes>", "not_before": 1767225600,
               "order_id": "o-7", "pin": {"salt": "<16 bytes>", "scrypt": "<32 bytes>"},
               "template": {"ct": "<AES-GCM ciphertext>", "epk": "<32 bytes>"},
               "window": {"end": 1767229200, "start": 1767225600}},
     "sig": "<64 bytes>", "v": 1}

Binary fields are unpadded base64url; every number is an integer, so there is no float
formatting to disagree about: latitude and longitude in 1e-7 degrees (about 1 cm), the drop
point's altitude above the take-off point in centimetres, times in Unix seconds (UTC). "pin"
is optional; every other field is required and no other field is allowed.

The dispatcher's Ed25519 signature covers ``SIGNATURE_DOMAIN`` followed by the canonical bytes
of the object without "sig"; the drone accepts only bytes that are exactly the canonical
encoding, so one order has one byte string and nothing outside the signature can vary.

The recipient's face template (n x 128 float32, little-endian) is sealed to the one drone that
flies the order: an ephemeral X25519 key per order, HKDF-SHA256 over the shared secret (salt:
the ephemeral and the drone's public key) giving an AES-256-GCM key and nonce used once, and
associated data binding the format version, order id and drone id, so a sealed template moved
into another order or to another drone does not open. The fallback PIN is stored as a salted
scrypt hash (N=2^14, r=8, p=1) and compared in constant time. A PIN hash can still be guessed
offline by whoever reads the order (a 6-digit PIN space is small); it is a second factor that
only counts through an authenticated operator command, never alone.

`verify_order` refuses, naming the reason (`OrderError.reason`): "malformed" (too large, not
canonical JSON, a missing, extra or out-of-range field), "version", "unsigned", "signature",
"wrong-drone", "expired", "not-yet-valid" (not_before more than `CLOCK_SKEW_S` ahead of the
drone's clock), "replay" (its nonce was accepted before; `NonceStore` keeps nonces on disk
across restarts until a day after their order expired) and "nonce-store" (the store cannot be
read or written: refusing is the safe side). Orders live at most `MAX_LIFETIME_S`, which
bounds the nonce store.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from companion.security.encoding import (
    EncodingError,
    b64url,
    canonical_json,
    from_b64url,
    loads_strict,
)
from companion.security.keys import DRONE_ID_PATTERN, raw_public

VERSION = 1
SIGNATURE_DOMAIN = b"skycourier/order-signature\x00"
#: An order over this many bytes is refused before it is parsed.
MAX_ORDER_BYTES = 32 * 1024
EMBEDDING_DIM = 128
MAX_TEMPLATE_ROWS = 16
ROW_BYTES = EMBEDDING_DIM * 4
GCM_TAG_BYTES = 16
NONCE_BYTES = 16
#: The longest an order may be valid (expires - not_before): it bounds the nonce store.
MAX_LIFETIME_S = 7 * 86400
#: How far the drone's clock may lag the dispatcher's before a fresh order is "not yet valid".
CLOCK_SKEW_S = 60
#: Nonces are kept this long after their order expired, so a clock stepped back a little
#: cannot make an expired, forgotten order valid and unseen again.
NONCE_GRACE_S = 86400
MAX_NONCE_STORE_BYTES = 16 * 1024 * 1024
ORDER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PIN_PATTERN = re.compile(r"[0-9]{4,12}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
PIN_SALT_BYTES = 16
PIN_HASH_BYTES = 32
_SEAL_INFO = b"skycourier/template-seal/v1"
_MAX_TIME = 2**40
_LAT_E7 = 900_000_000
_LON_E7 = 1_800_000_000
_ALT_CM = 100_000  # 1 km above or below the take-off point

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
    "sealed",
)


class OrderError(Exception):
    """An order that is refused: `reason` is one of `REASONS`, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"order refused ({reason}): {message}")


@dataclass(frozen=True)
class SealedTemplate:
    """A template sealed to one drone: the ephemeral public key and the ciphertext."""

    epk: bytes
    ciphertext: bytes

    @property
    def rows(self) -> int:
        """How many embeddings it holds (from the ciphertext's length; no key needed)."""
        return (len(self.ciphertext) - GCM_TAG_BYTES) // ROW_BYTES

    def digest(self) -> str:
        """SHA-256 (hex) over the ciphertext: names the sealed template without opening it."""
        return hashlib.sha256(self.epk + self.ciphertext).hexdigest()


@dataclass(frozen=True)
class PinHash:
    """The fallback PIN as scrypt(pin, salt) with the version's fixed parameters."""

    salt: bytes
    hash: bytes = field(repr=False)


@dataclass(frozen=True)
class Order:
    """A decoded order. Positions are kept as the exact integers that were signed; `lat`,
    `lon` and `alt_m` give them in degrees and metres."""

    order_id: str
    drone_id: str
    lat_e7: int
    lon_e7: int
    alt_cm: int
    not_before: int
    expires: int
    window_start: int
    window_end: int
    nonce: bytes
    sealed_template: SealedTemplate = field(repr=False)
    pin: PinHash | None = field(repr=False)
    #: SHA-256 (hex) of the whole order as received: names it in the audit trail.
    digest: str = field(compare=False)
    version: int = VERSION

    @property
    def lat(self) -> float:
        return self.lat_e7 / 1e7

    @property
    def lon(self) -> float:
        return self.lon_e7 / 1e7

    @property
    def alt_m(self) -> float:
        """Altitude of the drop point above the take-off point, metres."""
        return self.alt_cm / 100

    def summary(self) -> dict[str, Any]:
        """Everything but the template (only its row count and a prefix of its ciphertext's
        hash) and the PIN hash (only whether there is one): safe to print and to audit."""
        return {
            "v": self.version,
            "order_id": self.order_id,
            "drone_id": self.drone_id,
            "drop": {"lat": self.lat, "lon": self.lon, "alt_m": self.alt_m},
            "not_before": self.not_before,
            "expires": self.expires,
            "window": {"start": self.window_start, "end": self.window_end},
            "nonce": b64url(self.nonce),
            "recipient": {
                "rows": self.sealed_template.rows,
                "sealed_sha256": self.sealed_template.digest()[:16],
            },
            "pin": self.pin is not None,
            "digest": self.digest,
        }


# --- sealing ------------------------------------------------------------------------------


def _seal_aad(order_id: str, drone_id: str) -> bytes:
    return (
        _SEAL_INFO
        + b"\x00"
        + canonical_json({"drone_id": drone_id, "order_id": order_id, "v": VERSION})
    )


def _seal_key(shared: bytes, epk: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(), length=32 + 12, salt=epk + recipient, info=_SEAL_INFO
    ).derive(shared)
    return okm[:32], okm[32:]


def check_template(template: np.ndarray) -> np.ndarray:
    """`template` as a C-contiguous (n, 128) float32 array with 1 <= n <= MAX_TEMPLATE_ROWS
    and finite values; ValueError naming the problem otherwise."""
    array = np.asarray(template)
    if array.ndim != 2 or array.shape[1] != EMBEDDING_DIM:
        raise ValueError(f"a template is (n, {EMBEDDING_DIM}), got shape {array.shape}")
    if not 1 <= array.shape[0] <= MAX_TEMPLATE_ROWS:
        raise ValueError(f"a template has 1 to {MAX_TEMPLATE_ROWS} rows, got {array.shape[0]}")
    if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
        raise ValueError("a template holds finite floating-point numbers")
    return np.ascontiguousarray(array, dtype="<f4")


def seal_template(
    template: np.ndarray, *, seal_public: X25519PublicKey, order_id: str, drone_id: str
) -> SealedTemplate:
    """Seal `template` to the drone whose X25519 public key is `seal_public`."""
    plaintext = check_template(template).tobytes()
    ephemeral = X25519PrivateKey.generate()
    epk = raw_public(ephemeral.public_key())
    key, nonce = _seal_key(ephemeral.exchange(seal_public), epk, raw_public(seal_public))
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _seal_aad(order_id, drone_id))
    return SealedTemplate(epk, ciphertext)


def open_template(order: Order, drone_seal_key: X25519PrivateKey) -> np.ndarray:
    """The recipient template, shape (n, 128) float32; OrderError("sealed") with another
    drone's key or a ciphertext, key or id that was changed. The caller holds the array only
    for the hand-over and zeroes it afterwards (``template.fill(0)``); the decrypted bytes
    it was copied from are left to the garbage collector (Python cannot zero immutable bytes)."""
    sealed = order.sealed_template
    try:
        peer = X25519PublicKey.from_public_bytes(sealed.epk)
        shared = drone_seal_key.exchange(peer)
    except ValueError:
        raise OrderError("sealed", "the ephemeral key is invalid") from None
    key, nonce = _seal_key(shared, sealed.epk, raw_public(drone_seal_key.public_key()))
    try:
        plaintext = AESGCM(key).decrypt(
            nonce, sealed.ciphertext, _seal_aad(order.order_id, order.drone_id)
        )
    except InvalidTag:
        raise OrderError(
            "sealed",
            "the template does not open with this drone's key (another drone's "
            "order, or it was changed)",
        ) from None
    template = np.frombuffer(plaintext, dtype="<f4").astype(np.float32).reshape(-1, EMBEDDING_DIM)
    if not np.all(np.isfinite(template)):
        template.fill(0)
        raise OrderError("sealed", "the opened template holds non-finite values")
    return template


# --- PIN ------------------------------------------------------------------------------------


def _scrypt(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        pin.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=PIN_HASH_BYTES
    )


def hash_pin(pin: str) -> PinHash:
    """A new salted scrypt hash of `pin` (4 to 12 digits; ValueError otherwise)."""
    if not isinstance(pin, str) or not PIN_PATTERN.fullmatch(pin):
        raise ValueError("a fallback PIN is 4 to 12 digits")
    salt = os.urandom(PIN_SALT_BYTES)
    return PinHash(salt, _scrypt(pin, salt))


def check_pin(order: Order, pin: str) -> bool:
    """Whether `pin` is the order's fallback PIN; False when the order has none. The hashes
    are compared in constant time."""
    if order.pin is None or not isinstance(pin, str) or len(pin) > 64:
        return False
    return hmac.compare_digest(_scrypt(pin, order.pin.salt), order.pin.hash)


# --- encoding -------------------------------------------------------------------------------


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return SIGNATURE_DOMAIN + canonical_json({"order": body, "v": VERSION})


def _malformed(message: str) -> OrderError:
    return OrderError("malformed", message)


def _fields(
    value: Any, where: str, required: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(f"{where}: must be an object")
    missing = required - set(value)
    if missing:
        raise _malformed(f"{where}: missing {', '.join(sorted(missing))}")
    extra = set(value) - required - optional
    if extra:
        raise _malformed(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _malformed(f"{where}: must be an integer in [{low}, {high}], got {value!r:.40}")
    return value


def _text(value: Any, where: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _malformed(f"{where}: must match {pattern.pattern}, got {value!r:.80}")
    return value


def _bytes(value: Any, where: str, **limits: int) -> bytes:
    try:
        return from_b64url(value, **limits)
    except EncodingError as exc:
        raise _malformed(f"{where}: {exc}") from None


def _parse_body(body: Any, digest: str) -> Order:
    """The Order in a decoded "order" object; OrderError("malformed") naming the field."""
    body = _fields(
        body,
        "order",
        {"order_id", "drone_id", "drop", "not_before", "expires", "window", "nonce", "template"},
        frozenset({"pin"}),
    )
    drop = _fields(body["drop"], "order.drop", {"lat_e7", "lon_e7", "alt_cm"})
    window = _fields(body["window"], "order.window", {"start", "end"})
    sealed = _fields(body["template"], "order.template", {"epk", "ct"})
    not_before = _int(body["not_before"], "order.not_before", 0, _MAX_TIME)
    expires = _int(body["expires"], "order.expires", 0, _MAX_TIME)
    if not not_before < expires <= not_before + MAX_LIFETIME_S:
        raise _malformed(
            f"order.expires: must be after not_before and at most {MAX_LIFETIME_S} s after it"
        )
    start = _int(window["start"], "order.window.start", 0, _MAX_TIME)
    end = _int(window["end"], "order.window.end", 0, _MAX_TIME)
    if not not_before <= start < end <= expires:
        raise _malformed("order.window: must satisfy not_before <= start < end <= expires")
    ciphertext = _bytes(
        sealed["ct"], "order.template.ct", max_size=MAX_TEMPLATE_ROWS * ROW_BYTES + GCM_TAG_BYTES
    )
    rows, rest = divmod(len(ciphertext) - GCM_TAG_BYTES, ROW_BYTES)
    if rest or not 1 <= rows <= MAX_TEMPLATE_ROWS:
        raise _malformed(
            f"order.template.ct: must hold 1 to {MAX_TEMPLATE_ROWS} rows of {EMBEDDING_DIM} "
            f"float32 plus the {GCM_TAG_BYTES}-byte tag, got {len(ciphertext)} bytes"
        )
    pin = None
    if "pin" in body:
        fields = _fields(body["pin"], "order.pin", {"salt", "scrypt"})
        pin = PinHash(
            _bytes(fields["salt"], "order.pin.salt", size=PIN_SALT_BYTES),
            _bytes(fields["scrypt"], "order.pin.scrypt", size=PIN_HASH_BYTES),
        )
    return Order(
        order_id=_text(body["order_id"], "order.order_id", ORDER_ID_PATTERN),
        drone_id=_text(body["drone_id"], "order.drone_id", DRONE_ID_PATTERN),
        lat_e7=_int(drop["lat_e7"], "order.drop.lat_e7", -_LAT_E7, _LAT_E7),
        lon_e7=_int(drop["lon_e7"], "order.drop.lon_e7", -_LON_E7, _LON_E7),
        alt_cm=_int(drop["alt_cm"], "order.drop.alt_cm", -_ALT_CM, _ALT_CM),
        not_before=not_before,
        expires=expires,
        window_start=start,
        window_end=end,
        nonce=_bytes(body["nonce"], "order.nonce", size=NONCE_BYTES),
        sealed_template=SealedTemplate(
            _bytes(sealed["epk"], "order.template.epk", size=32), ciphertext
        ),
        pin=pin,
        digest=digest,
    )


def decode_order(blob: bytes) -> tuple[Order, bytes, bytes]:
    """(order, signed bytes, signature) from `blob`, checking its form but not its signature;
    OrderError "malformed", "version" or "unsigned" otherwise. Anything at all may be given:
    no other exception escapes."""
    if not isinstance(blob, bytes | bytearray):
        raise _malformed(f"an order is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) > MAX_ORDER_BYTES:
        raise _malformed(f"{len(blob)} bytes, over the {MAX_ORDER_BYTES}-byte limit")
    try:
        doc = loads_strict(blob, allow_floats=False)
    except EncodingError as exc:
        raise _malformed(str(exc)) from None
    if not isinstance(doc, dict):
        raise _malformed("an order is a JSON object")
    if "v" not in doc:
        raise _malformed('no version ("v")')
    if doc["v"] != VERSION or type(doc["v"]) is not int:
        raise OrderError(
            "version", f"version {doc['v']!r:.20} is not {VERSION}, the one this build reads"
        )
    if doc.get("sig") in (None, ""):
        raise OrderError("unsigned", "the order carries no signature")
    _fields(doc, "(top level)", {"v", "order", "sig"})
    if canonical_json(doc) != blob:
        raise _malformed("not in canonical form (sorted keys, no spaces, ASCII)")
    signature = _bytes(doc["sig"], "sig", size=64)
    order = _parse_body(doc["order"], hashlib.sha256(blob).hexdigest())
    return order, _signed_bytes(doc["order"]), signature


def create_order(
    signing_key: Ed25519PrivateKey,
    *,
    drone_id: str,
    seal_public: X25519PublicKey,
    order_id: str,
    lat: float,
    lon: float,
    template: np.ndarray,
    not_before: int,
    expires: int,
    alt_m: float = 0.0,
    window: tuple[int, int] | None = None,
    pin: str | None = None,
) -> bytes:
    """A signed, canonical order for `drone_id` with `template` sealed to `seal_public`.
    `window` (start, end) defaults to (not_before, expires). Bad arguments are a ValueError
    naming the field."""
    for name, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > limit:
            raise ValueError(f"{name}: must be a number within +-{limit:g} degrees, got {value!r}")
    if not isinstance(alt_m, int | float) or not math.isfinite(alt_m):
        raise ValueError(f"alt_m: must be a finite number, got {alt_m!r}")
    start, end = window if window is not None else (not_before, expires)
    sealed = seal_template(template, seal_public=seal_public, order_id=order_id, drone_id=drone_id)
    body: dict[str, Any] = {
        "order_id": order_id,
        "drone_id": drone_id,
        "drop": {
            "lat_e7": round(lat * 1e7),
            "lon_e7": round(lon * 1e7),
            "alt_cm": round(alt_m * 100),
        },
        "not_before": not_before,
        "expires": expires,
        "window": {"start": start, "end": end},
        "nonce": b64url(os.urandom(NONCE_BYTES)),
        "template": {"epk": b64url(sealed.epk), "ct": b64url(sealed.ciphertext)},
    }
    if pin is not None:
        pin_hash = hash_pin(pin)
        body["pin"] = {"salt": b64url(pin_hash.salt), "scrypt": b64url(pin_hash.hash)}
    try:
        _parse_body(body, "")
    except OrderError as exc:
        raise ValueError(exc.message) from None
    signature = signing_key.sign(_signed_bytes(body))
    return canonical_json({"order": body, "sig": b64url(signature), "v": VERSION})


# --- nonces ---------------------------------------------------------------------------------


class NonceStore:
    """The nonces of accepted orders with their expiry, in a JSON file rewritten atomically
    (temporary file, fsync, rename, fsync of the folder) on every accepted order, so a
    replayed order is refused after a restart too. Entries are pruned `NONCE_GRACE_S` after
    their order expired (it is refused as expired by then). `path` None keeps them in memory
    only (dry checks). An unreadable or corrupt file is an OrderError("nonce-store"): with
    the memory of accepted orders gone, no order can be accepted safely."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._nonces = self._load()

    def _error(self, message: str) -> OrderError:
        return OrderError("nonce-store", f"{self.path}: {message}")

    def _load(self) -> dict[str, int]:
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_NONCE_STORE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror or exc}") from None
        if len(data) > MAX_NONCE_STORE_BYTES:
            raise self._error(f"over {MAX_NONCE_STORE_BYTES} bytes")
        try:
            doc = loads_strict(data, allow_floats=False)
        except EncodingError as exc:
            raise self._error(f"corrupt: {exc}") from None
        nonces = doc.get("nonces") if isinstance(doc, dict) and doc.get("v") == 1 else None
        if not isinstance(nonces, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in nonces.items()
        ):
            raise self._error('corrupt: expected {"v": 1, "nonces": {nonce: expires}}')
        return nonces

    def __contains__(self, nonce: bytes) -> bool:
        with self._lock:
            return b64url(nonce) in self._nonces

    def __len__(self) -> int:
        with self._lock:
            return len(self._nonces)

    def remember(self, nonce: bytes, expires: int, now: float) -> bool:
        """Record `nonce` (kept until `expires` + NONCE_GRACE_S), pruning older ones; on disk
        before this returns True. False, recording nothing, if it was already there (checked
        and recorded under one lock, so two threads cannot both accept one order)."""
        key = b64url(nonce)
        with self._lock:
            if key in self._nonces:
                return False
            kept = {n: e for n, e in self._nonces.items() if e + NONCE_GRACE_S > now}
            kept[key] = expires
            if self.path is not None:
                self._write(kept)
            self._nonces = kept
            return True

    def _write(self, nonces: dict[str, int]) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(canonical_json({"nonces": nonces, "v": 1}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            raise self._error(f"cannot be written: {exc.strerror or exc}") from None


# --- verification ---------------------------------------------------------------------------


def verify_order(
    blob: bytes,
    *,
    dispatcher_public: Ed25519PublicKey,
    drone_id: str,
    now: float,
    nonces: NonceStore,
    record: bool = True,
) -> Order:
    """The order in `blob` if it may be flown by `drone_id` at `now` (Unix seconds); its
    nonce is then recorded in `nonces` (durably) unless `record` is False (a dry check, e.g.
    `skycourier order inspect`, which still refuses a nonce already recorded). Otherwise
    OrderError with the reason; the checks run in the order of the module docstring's list."""
    order, signed, signature = decode_order(blob)
    try:
        dispatcher_public.verify(signature, signed)
    except InvalidSignature:
        raise OrderError("signature", "the dispatcher's signature does not verify") from None
    if order.drone_id != drone_id:
        raise OrderError(
            "wrong-drone", f"addressed to drone {order.drone_id!r}, this is {drone_id!r}"
        )
    if now >= order.expires:
        raise OrderError("expired", f"expired at {order.expires}, {now - order.expires:.0f} s ago")
    if now < order.not_before - CLOCK_SKEW_S:
        raise OrderError(
            "not-yet-valid",
            f"valid from {order.not_before}, {order.not_before - now:.0f} s from now",
        )
    replayed = OrderError("replay", f"nonce {b64url(order.nonce)} was accepted before")
    if order.nonce in nonces:
        raise replayed
    if record and not nonces.remember(order.nonce, order.expires, now):
        raise replayed
    return order
