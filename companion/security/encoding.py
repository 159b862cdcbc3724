"""Canonical JSON and strict base64url, the encodings orders, key files and the audit trail use.

A signature or a hash is only as good as the uniqueness of the bytes it covers, so there is
exactly one encoding of each value: keys sorted, no whitespace, ASCII only (every non-ASCII
character escaped), no NaN or infinity, and binary as unpadded base64url whose unused bits are
zero. The decoder is strict the other way round: duplicate keys, NaN/Infinity and (where a
format has no use for them) floats are errors, so that no two different byte strings decode to
the same value and a verifier can demand that the bytes it got are the canonical ones.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class EncodingError(ValueError):
    """Bytes that are not the canonical encoding; the message says what is wrong."""


def canonical_json(value: Any) -> bytes:
    """The one encoding of `value`: sorted keys, no spaces, ASCII, no NaN/infinity."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise EncodingError(f"cannot be encoded as canonical JSON: {exc}") from None
    return text.encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EncodingError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise EncodingError(f"{name} is not allowed")


def _refuse_float(text: str) -> Any:
    raise EncodingError(f"non-integer number {text[:20]!r} (numbers here are integers)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise EncodingError(f"number {text[:20]!r} is out of range")
    return value


def loads_strict(data: bytes, *, allow_floats: bool) -> Any:
    """Decode UTF-8 JSON strictly (no duplicate keys, no NaN/Infinity, floats only when
    `allow_floats` and only finite ones: 1e400 would decode as infinity); any problem,
    including nesting too deep to decode, is an EncodingError."""
    try:
        text = data.decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_finite_float if allow_floats else _refuse_float,
        )
    except EncodingError:
        raise
    except UnicodeDecodeError as exc:
        raise EncodingError(f"not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise EncodingError("nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, and Python's int-digits limit
        raise EncodingError(f"not JSON: {exc}") from None


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5) of `data`."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: object, *, size: int | None = None, max_size: int | None = None) -> bytes:
    """Bytes from unpadded canonical base64url; `size` demands an exact length, `max_size` an
    upper bound (checked on the text before decoding)."""
    if not isinstance(text, str):
        raise EncodingError(f"must be a base64url string, got {type(text).__name__}")
    if max_size is not None and len(text) > (max_size * 4 + 2) // 3:
        raise EncodingError(f"longer than {max_size} bytes")
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise EncodingError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise EncodingError(f"not base64url: {exc}") from None
    if b64url(data) != text:
        raise EncodingError("not canonical base64url (unused bits set)")
    if size is not None and len(data) != size:
        raise EncodingError(f"must be {size} bytes, got {len(data)}")
    return data
