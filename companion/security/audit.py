"""The audit trail: append-only, hash-chained, signed records of every hand-over decision.

One record per line (JSON Lines), each the canonical JSON (see `encoding`) of

    {"seq": 0, "time": 1767225600.123, "kind": "order-accepted", "data": {...},
     "prev": "<hash of the record before; 64 zeros for the first>",
     "hash": "<SHA-256 over the canonical record without hash and sig>",
     "sig": "<Ed25519 over SIGNATURE_DOMAIN + the hash, by the drone's identity key>"}

("sig" only when the trail has a signer.) Each record names the hash of the one before, so an
edited record no longer matches its hash, and a deleted, inserted or moved one breaks the seq
numbers or the chain of `prev` hashes. Without signatures anyone who can write the file can
recompute every hash after an edit; with them, only the holder of the drone's identity key can
write a record that verifies.

What no chain can show by itself is a trail cut short at its end: the remaining records are
still a valid chain. `verify_audit` therefore reports the head (the last record's hash); a head
recorded elsewhere (sent with the telemetry, printed in a report) and handed back as
`expect_head` must appear in the chain, or records were removed from its end.

Appending opens the file with O_APPEND, holds an exclusive lock on it (one writer), writes the
whole line with one write and fsyncs before `append` returns, so a record that was reported
written survives a power cut. Reopening checks the existing chain (hashes and links; the
signatures are `verify_audit`'s job) and continues it, and refuses to append to a chain that is
broken or ends in a cut-off line, naming the line.

No biometric data goes in: a field named like template/embedding/descriptor/landmarks, a list
of more than `MAX_NUMBERS_IN_LIST` numbers, binary data, an array, or a long unbroken token
(encoded binary) is a ValueError, and nothing is written.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from companion.security.encoding import (
    EncodingError,
    b64url,
    canonical_json,
    from_b64url,
    loads_strict,
)

GENESIS = "0" * 64
SIGNATURE_DOMAIN = b"skycourier/audit-record\x00"
#: A record line over this many bytes is refused (when written) or reported (when verified).
MAX_RECORD_BYTES = 64 * 1024
#: More numbers than this in one list could be an embedding or landmarks.
MAX_NUMBERS_IN_LIST = 8
#: A token this long without whitespace looks like encoded binary (an embedding in base64).
MAX_TOKEN_CHARS = 128
BIOMETRIC_WORDS = ("template", "embedding", "descriptor", "landmark")
KIND_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_HASH = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"seq", "time", "kind", "data", "prev", "hash"}
_LONG_TOKEN = re.compile(rf"\S{{{MAX_TOKEN_CHARS + 1},}}")


class AuditError(Exception):
    """The trail cannot be written: a broken chain, a lock held by another process, an I/O
    error. The message names the file (and the line)."""


def _numbers_in(value: Any) -> int:
    if isinstance(value, list | tuple):
        return sum(_numbers_in(v) for v in value)
    return 1 if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _plain(value: Any, where: str) -> Any:
    """`value` as plain JSON data (NumPy scalars as Python numbers), or ValueError when it is
    not JSON data or could hold biometric data."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit field {where}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        if _LONG_TOKEN.search(value):
            raise ValueError(
                f"audit field {where}: a token over {MAX_TOKEN_CHARS} characters could be encoded "
                "biometric data"
            )
        return value
    if isinstance(value, np.ndarray | bytes | bytearray | memoryview):
        raise ValueError(
            f"audit field {where}: {type(value).__name__} is not allowed (arrays and binary data "
            "could be biometric data)"
        )
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"audit field {where}: key {key!r} is not a string")
            if any(word in key.lower() for word in BIOMETRIC_WORDS):
                raise ValueError(
                    f"audit field {where}.{key}: refused, it could hold biometric data "
                    "(templates, embeddings, descriptors and landmarks never go in the audit trail)"
                )
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        count = _numbers_in(value)
        if count > MAX_NUMBERS_IN_LIST:
            raise ValueError(
                f"audit field {where}: a list of {count} numbers could be biometric data (an "
                f"embedding or landmarks); at most {MAX_NUMBERS_IN_LIST}"
            )
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"audit field {where}: {type(value).__name__} is not JSON data")


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) over the canonical record without its "hash" and "sig"."""
    body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class AuditReport:
    """What `verify_audit` found. `head` is the hash of the last good record (GENESIS for an
    empty trail); on a bad trail `bad_line` (1-based) and `reason` name the first problem."""

    ok: bool
    records: int
    head: str
    signatures_checked: bool
    bad_line: int | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.ok:
            signed = "signatures verified" if self.signatures_checked else "signatures not checked"
            return f"OK: {self.records} records, head {self.head} ({signed})"
        where = f"line {self.bad_line}" if self.bad_line is not None else "trail"
        return f"BAD: {where}: {self.reason} ({self.records} good records before it)"


class _Bad(Exception):
    pass


def _lines(f: BinaryIO) -> Iterator[bytes]:
    while True:
        line = f.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        yield line


def _check_record(line: bytes, seq: int, prev: str, public_key: Ed25519PublicKey | None) -> str:
    """The hash of the record on `line` if it is record number `seq` following `prev`."""
    if not line.endswith(b"\n"):
        if len(line) > MAX_RECORD_BYTES:
            raise _Bad(f"over {MAX_RECORD_BYTES} bytes")
        raise _Bad("incomplete (no end of line): a write was cut off")
    line = line[:-1]
    try:
        record = loads_strict(line, allow_floats=True)
    except EncodingError as exc:
        raise _Bad(f"not a record: {exc}") from None
    if not isinstance(record, dict) or not _FIELDS <= set(record) <= _FIELDS | {"sig"}:
        raise _Bad(f"not a record: fields must be {sorted(_FIELDS)} and optionally sig")
    if canonical_json(record) != line:
        raise _Bad("not in canonical form: the line was edited")
    if type(record["seq"]) is not int:
        raise _Bad("seq is not an integer")
    if record["seq"] != seq:
        raise _Bad(
            f"seq {record['seq']} where {seq} was expected: a record was deleted, inserted or moved"
        )
    if record["prev"] != prev:
        raise _Bad(
            "prev is not the hash of the record before: a record was deleted, inserted or moved"
        )
    digest = record_hash(record)
    if record["hash"] != digest:
        raise _Bad("hash does not match the record's content: the record was edited")
    if public_key is not None:
        if "sig" not in record:
            raise _Bad("unsigned record")
        try:
            public_key.verify(
                from_b64url(record["sig"], size=64), SIGNATURE_DOMAIN + bytes.fromhex(digest)
            )
        except (EncodingError, InvalidSignature):
            raise _Bad("signature does not verify (edited, or signed by another key)") from None
    return digest


def _scan(f: BinaryIO, public_key: Ed25519PublicKey | None, expect_head: str | None) -> AuditReport:
    head, count, seen_expected = GENESIS, 0, expect_head == GENESIS
    for number, line in enumerate(_lines(f), start=1):
        try:
            head = _check_record(line, count, head, public_key)
        except _Bad as exc:
            return AuditReport(False, count, head, public_key is not None, number, str(exc))
        count += 1
        seen_expected = seen_expected or head == expect_head
    if expect_head is not None and not seen_expected:
        return AuditReport(
            False,
            count,
            head,
            public_key is not None,
            None,
            f"the head recorded elsewhere ({expect_head}) is not in the chain: records were "
            "removed from its end, or it is another trail",
        )
    return AuditReport(True, count, head, public_key is not None)


def verify_audit(
    path: Path, public_key: Ed25519PublicKey | None = None, *, expect_head: str | None = None
) -> AuditReport:
    """Check every record of the trail at `path`: canonical form, seq numbers, the chain of
    hashes and, with `public_key` (the drone's identity key), every signature. Detects edited,
    deleted, inserted and reordered records and names the first bad one. A trail cut short at
    its end is still a valid chain: pass the head recorded elsewhere as `expect_head` to
    detect that. AuditError if the file cannot be read."""
    if expect_head is not None and not _HASH.fullmatch(expect_head):
        raise ValueError(f"a head is 64 lowercase hex digits, got {expect_head!r}")
    try:
        with open(path, "rb") as f:
            return _scan(f, public_key, expect_head)
    except OSError as exc:
        raise AuditError(f"{path}: cannot be read: {exc.strerror or exc}") from None


class AuditTrail:
    """An audit trail open for appending (see the module docstring). `clock` gives the records'
    time (Unix seconds); `signer` is the drone's identity key (None: unsigned records)."""

    def __init__(
        self,
        path: Path,
        signer: Ed25519PrivateKey | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._signer = signer
        self._clock = clock
        self._lock = threading.Lock()
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot be opened: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditError(
                    f"{self.path}: in use by another process (one writer at a time)"
                ) from None
            with os.fdopen(os.dup(self._fd), "rb") as f:
                report = _scan(f, None, None)
            if not report.ok:
                raise AuditError(
                    f"{self.path}: the chain is broken at line {report.bad_line}: {report.reason}; "
                    "refusing to append (keep the file as evidence and start a new trail)"
                )
            if created:
                folder = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except BaseException:
            os.close(self._fd)
            raise
        self._seq = report.records
        self._head = report.head

    @property
    def head(self) -> str:
        """The hash of the last record (GENESIS while the trail is empty)."""
        return self._head

    @property
    def records(self) -> int:
        return self._seq

    def append(self, kind: str, /, **data: Any) -> dict[str, Any]:
        """Write one record and return it, durable (fsynced) when this returns. ValueError for
        a bad kind, data that is not JSON or could hold biometric data, or a record over
        MAX_RECORD_BYTES (nothing is written then); AuditError if the write fails."""
        if not isinstance(kind, str) or not KIND_PATTERN.fullmatch(kind):
            raise ValueError(f"audit kind must match {KIND_PATTERN.pattern}, got {kind!r}")
        plain = _plain(data, "data")
        with self._lock:
            if self._fd < 0:
                raise AuditError(f"{self.path}: the trail is closed")
            now = float(self._clock())
            if not math.isfinite(now):
                raise ValueError(f"the clock gave {now}")
            record: dict[str, Any] = {
                "seq": self._seq,
                "time": round(now, 3),
                "kind": kind,
                "data": plain,
                "prev": self._head,
            }
            try:
                record["hash"] = record_hash(record)
            except EncodingError as exc:
                raise ValueError(f"audit data: {exc}") from None
            if self._signer is not None:
                record["sig"] = b64url(
                    self._signer.sign(SIGNATURE_DOMAIN + bytes.fromhex(record["hash"]))
                )
            line = canonical_json(record) + b"\n"
            if len(line) > MAX_RECORD_BYTES:
                raise ValueError(f"audit record of {len(line)} bytes, over {MAX_RECORD_BYTES}")
            self._write(line)
            self._seq += 1
            self._head = record["hash"]
            return record

    def _write(self, line: bytes) -> None:
        try:
            written = os.write(self._fd, line)
            if written != len(line):  # a short write on a full disk: the line is cut off
                raise OSError(f"only {written} of {len(line)} bytes written")
            os.fsync(self._fd)
        except OSError as exc:
            # What reached the file is unknown now: appending more could break the chain.
            os.close(self._fd)
            self._fd = -1
            raise AuditError(f"{self.path}: cannot be written, trail closed: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
