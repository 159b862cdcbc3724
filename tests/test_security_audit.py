"""The audit trail: hash-chained, signed, durable records; the verifier finds edited, deleted,
inserted and reordered records and wrong signatures; reopening continues the chain and refuses
a broken one; no biometric data gets in."""

from __future__ import annotations

import functools
import itertools
import json
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.security.audit import (
    GENESIS,
    AuditError,
    AuditTrail,
    record_hash,
    verify_audit,
)
from companion.security.encoding import canonical_json

KEY = Ed25519PrivateKey.generate()


def _clock() -> Iterator[float]:
    t = 1_767_225_600.0
    while True:
        t += 0.25
        yield t


def _trail(path: Path, signer: Ed25519PrivateKey | None = KEY, records: int = 5) -> list[dict]:
    ticks = _clock()
    with AuditTrail(path, signer, clock=lambda: next(ticks)) as trail:
        written = [trail.append("order-accepted", order_id="o-7", digest="ab" * 32)]
        for i in range(1, records):
            written.append(
                trail.append("face-check", frame=i, distance=0.31 + i / 100, live=i % 2 == 0)
            )
    return written


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_chain_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    written = _trail(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = _lines(path)
    assert len(lines) == 5
    records = [json.loads(line) for line in lines]
    assert records == written
    assert [r["seq"] for r in records] == list(range(5))
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    for record in records:
        assert record["hash"] == record_hash(record)
        assert canonical_json(record) + b"\n" in lines
        assert set(record) == {"seq", "time", "kind", "data", "prev", "hash", "sig"}
    report = verify_audit(path, KEY.public_key())
    assert report.ok and report.records == 5 and report.signatures_checked
    assert report.head == records[-1]["hash"]
    assert str(report) == f"OK: 5 records, head {report.head} (signatures verified)"
    unsigned_check = verify_audit(path)
    assert unsigned_check.ok and not unsigned_check.signatures_checked


def test_an_empty_trail_verifies_with_the_genesis_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    report = verify_audit(path, KEY.public_key())
    assert report.ok and report.records == 0 and report.head == GENESIS


PUBLIC = KEY.public_key()


def _bad(path: Path, key=PUBLIC) -> tuple[int | None, str]:
    report = verify_audit(path, key)
    assert not report.ok
    return report.bad_line, report.reason or ""


def test_an_edited_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path)
    lines = _lines(path)
    record = json.loads(lines[2])
    record["data"]["distance"] = 0.2  # a better match than there was
    lines[2] = canonical_json(record) + b"\n"
    path.write_bytes(b"".join(lines))
    line, reason = _bad(path)
    assert line == 3 and "the record was edited" in reason
    # Edited with its hash recomputed: the signature no longer verifies...
    record["hash"] = record_hash(record)
    lines[2] = canonical_json(record) + b"\n"
    path.write_bytes(b"".join(lines))
    assert _bad(path)[0] == 3 and "signature does not verify" in _bad(path)[1]
    # ... and without checking signatures the next record's link is broken.
    assert _bad(path, None) == (
        4,
        "prev is not the hash of the record before: a record was deleted, inserted or moved",
    )


def test_a_hand_edited_line_is_found_even_when_its_values_are_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path)
    lines = _lines(path)
    lines[1] = json.dumps(json.loads(lines[1]), indent=None).encode() + b"\n"  # spaces added
    path.write_bytes(b"".join(lines))
    assert _bad(path) == (2, "not in canonical form: the line was edited")


def test_a_deleted_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path)
    lines = _lines(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    line, reason = _bad(path)
    assert line == 2 and "seq 2 where 1 was expected" in reason


def test_an_inserted_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path)
    lines = _lines(path)
    # A forged record that fits the chain (right seq and prev, correct hash) but is not signed
    # by the drone, inserted after record 1; the records after it are renumbered and relinked.
    forged = _trail(tmp_path / "other.jsonl", Ed25519PrivateKey.generate(), records=2)[1]
    forged["prev"] = json.loads(lines[0])["hash"]
    forged["hash"] = record_hash(forged)
    lines.insert(1, canonical_json(forged) + b"\n")
    path.write_bytes(b"".join(lines))
    assert _bad(path)[0] == 2  # its signature, or its place in the chain, gives it away
    assert _bad(path, None)[0] == 3  # the record after it no longer follows


def test_reordered_records_are_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    line, reason = _bad(path)
    assert line == 2 and "seq 2 where 1 was expected" in reason


def test_a_wrong_key_or_a_missing_signature_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path)
    line, reason = _bad(path, Ed25519PrivateKey.generate().public_key())
    assert line == 1 and "signature does not verify" in reason
    unsigned = tmp_path / "unsigned.jsonl"
    _trail(unsigned, signer=None)
    assert verify_audit(unsigned).ok
    assert _bad(unsigned) == (1, "unsigned record")


def test_a_cut_off_tail_is_found_against_a_head_recorded_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    written = _trail(path)
    head = written[-1]["hash"]
    assert verify_audit(path, KEY.public_key(), expect_head=head).ok
    assert verify_audit(path, KEY.public_key(), expect_head=written[2]["hash"]).ok  # older head
    path.write_bytes(b"".join(_lines(path)[:-2]))
    truncated = verify_audit(path, KEY.public_key())
    assert truncated.ok and truncated.head == written[2]["hash"]  # the chain alone cannot tell
    report = verify_audit(path, KEY.public_key(), expect_head=head)
    assert not report.ok
    assert "records were removed from its end" in (report.reason or "")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        verify_audit(path, expect_head="abc")


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    written = _trail(path, records=3)
    with AuditTrail(path, KEY) as trail:
        assert (trail.records, trail.head) == (3, written[-1]["hash"])
        record = trail.append("verdict", released=True)
    assert record["seq"] == 3 and record["prev"] == written[-1]["hash"]
    report = verify_audit(path, KEY.public_key())
    assert report.ok and report.records == 4 and report.head == record["hash"]


def test_reopening_refuses_a_broken_chain_and_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path)
    lines = _lines(path)
    del lines[3]
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    with pytest.raises(AuditError, match=r"the chain is broken at line 4: seq 4 where 3"):
        AuditTrail(path, KEY)
    assert path.read_bytes() == before


def test_a_cut_off_last_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path)
    path.write_bytes(path.read_bytes()[:-20])
    assert _bad(path) == (5, "incomplete (no end of line): a write was cut off")
    with pytest.raises(AuditError, match="line 5: incomplete"):
        AuditTrail(path, KEY)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditTrail(path, KEY), pytest.raises(AuditError, match="in use by another process"):
        AuditTrail(path, KEY)
    with AuditTrail(path, KEY) as trail:  # released on close
        trail.append("boot")


def test_a_closed_trail_refuses_to_append(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    trail.close()
    with pytest.raises(AuditError, match="closed"):
        trail.append("late")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"template": [0.1, 0.2]}, "data.template: refused, it could hold biometric data"),
        ({"face_embedding": "x"}, "data.face_embedding: refused"),
        ({"check": {"Landmarks68": []}}, "data.check.Landmarks68: refused"),
        ({"descriptor": None}, "data.descriptor: refused"),
        ({"values": [0.5] * 128}, "data.values: a list of 128 numbers"),
        ({"points": [[1.0, 2.0]] * 68}, "data.points: a list of 136 numbers"),
        ({"vector": np.zeros(3, np.float32)}, "data.vector: ndarray is not allowed"),
        ({"raw": b"\x00" * 16}, "data.raw: bytes is not allowed"),
        ({"blob": "A" * 683}, "a token over 128 characters"),
        ({"score": float("nan")}, "data.score: nan is not a finite number"),
        ({"when": object()}, "data.when: object is not JSON data"),
        ({"m": {1: 2}}, "data.m: key 1 is not a string"),
    ],
)
def test_biometric_or_unencodable_data_is_refused_and_nothing_written(
    tmp_path: Path, data: dict, message: str
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditTrail(path, KEY) as trail:
        trail.append("boot")
        with pytest.raises(ValueError) as info:
            trail.append("face-check", **data)
        assert message in str(info.value)
        trail.append("after")
    assert verify_audit(path, KEY.public_key()).records == 2


def test_measurements_go_in_as_plain_numbers(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditTrail(path, KEY) as trail:
        record = trail.append(
            "liveness",
            passed=True,
            ear_baseline=np.float32(0.31),
            ear_min=np.float64(0.12),
            frames=np.int64(42),
            box=[10, 20, 110, 140],
            reason="blink seen",
        )
    assert record["data"]["frames"] == 42 and isinstance(record["data"]["ear_min"], float)
    assert verify_audit(path, KEY.public_key()).ok


@pytest.mark.parametrize("kind", ["", "Bad", "a b", "x" * 65, "-x"])
def test_a_bad_kind_is_refused(tmp_path: Path, kind: str) -> None:
    with AuditTrail(tmp_path / "audit.jsonl") as trail, pytest.raises(ValueError, match="kind"):
        trail.append(kind)


def test_a_missing_trail_is_an_audit_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"no-such\.jsonl: cannot be read"):
        verify_audit(tmp_path / "no-such.jsonl")


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    garbage=st.binary(min_size=1, max_size=200),
)
def test_any_damage_to_a_trail_is_found_never_crashes(
    data: st.DataObject, garbage: bytes, tmp_path_factory
) -> None:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    original = _signed_trail_bytes()
    damaged = bytearray(original)
    op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    i = data.draw(st.integers(0, len(damaged) - 1))
    if op == "flip":
        damaged[i] ^= garbage[0] or 1
    elif op == "insert":
        damaged[i:i] = garbage
    else:
        del damaged[i : i + len(garbage)]
    path.write_bytes(bytes(damaged))
    report = verify_audit(path, KEY.public_key())
    damaged_bytes = bytes(damaged)
    # Only whole records cut off the end go unnoticed by the chain (see the expect_head test).
    whole_records_cut = original.startswith(damaged_bytes) and (
        damaged_bytes == b"" or damaged_bytes.endswith(b"\n")
    )
    assert report.ok == whole_records_cut, damaged_bytes


@functools.cache
def _signed_trail_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        _trail(path)
        return path.read_bytes()


@pytest.mark.parametrize(
    "line",
    [
        b"1e400\n",
        b'{"data":{},"hash":"","kind":"x","prev":"","seq":0,"time":1e400}\n',
        b"[" * 100_000 + b"\n",
        b"\xff\xfe\n",
        b'{"seq":0,"seq":0}\n',
        b"NaN\n",
        b"\n",
        b'{"seq":' + b"9" * 5000 + b"}\n",
    ],
)
def test_hostile_lines_are_reported_not_raised(tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(_signed_trail_bytes() + line)
    report = verify_audit(path, PUBLIC)
    assert not report.ok and report.bad_line == 6 and report.records == 5
