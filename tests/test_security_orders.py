"""Signed orders: created canonical, verified on the drone, refused with their reason when
tampered, unsigned, wrongly addressed, expired, not yet valid, of an unknown version or
replayed (also after a restart); the sealed template opens only with the right drone's key."""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.security.encoding import b64url, canonical_json
from companion.security.orders import (
    CLOCK_SKEW_S,
    MAX_LIFETIME_S,
    MAX_ORDER_BYTES,
    NONCE_GRACE_S,
    SIGNATURE_DOMAIN,
    NonceStore,
    Order,
    OrderError,
    check_pin,
    create_order,
    open_template,
    verify_order,
)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DRONE = "sky-1"


@functools.cache
def _keys() -> tuple[Ed25519PrivateKey, X25519PrivateKey]:
    return Ed25519PrivateKey.generate(), X25519PrivateKey.generate()


def _template(rows: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, size=(rows, 128)).astype(np.float32)


def _order(**changes: Any) -> bytes:
    dispatcher, seal = _keys()
    args: dict[str, Any] = {
        "drone_id": DRONE,
        "seal_public": seal.public_key(),
        "order_id": "o-7",
        "lat": -35.3600712,
        "lon": 149.1691384,
        "alt_m": 12.34,
        "template": _template(),
        "not_before": T0,
        "expires": T0 + 3600,
        "window": (T0 + 600, T0 + 1800),
    }
    args.update(changes)
    signer = args.pop("signer", dispatcher)
    return create_order(signer, **args)


@functools.cache
def _valid_order() -> bytes:
    return _order()


def _verify(blob: bytes, now: float = T0 + 60, nonces: NonceStore | None = None, **kw) -> Order:
    return verify_order(
        blob,
        dispatcher_public=_keys()[0].public_key(),
        drone_id=kw.pop("drone_id", DRONE),
        now=now,
        nonces=nonces if nonces is not None else NonceStore(None),
        **kw,
    )


def _refusal(blob: bytes, **kw) -> OrderError:
    with pytest.raises(OrderError) as info:
        _verify(blob, **kw)
    return info.value


def _resign(doc: dict[str, Any], key: Ed25519PrivateKey | None = None) -> bytes:
    """`doc` re-encoded and signed as the dispatcher would (the documented signed bytes)."""
    key = key or _keys()[0]
    signed = SIGNATURE_DOMAIN + canonical_json({"order": doc["order"], "v": doc["v"]})
    return canonical_json({**doc, "sig": b64url(key.sign(signed))})


def test_a_valid_order_round_trips() -> None:
    blob = _valid_order()
    order = _verify(blob)
    assert (order.order_id, order.drone_id) == ("o-7", DRONE)
    assert (order.lat_e7, order.lon_e7, order.alt_cm) == (-353600712, 1491691384, 1234)
    assert (order.lat, order.lon, order.alt_m) == (-35.3600712, 149.1691384, 12.34)
    assert (order.not_before, order.expires) == (T0, T0 + 3600)
    assert (order.window_start, order.window_end) == (T0 + 600, T0 + 1800)
    assert len(order.nonce) == 16 and order.pin is None
    np.testing.assert_array_equal(open_template(order, _keys()[1]), _template())
    assert open_template(order, _keys()[1]).dtype == np.float32
    # The encoding: canonical JSON with a top-level version; no floats anywhere.
    doc = json.loads(blob)
    assert doc["v"] == 1 and set(doc) == {"v", "order", "sig"}
    assert canonical_json(doc) == blob
    assert not _floats(doc)


def _floats(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return [value] if isinstance(value, float) else []


def test_the_summary_hides_the_template_and_the_pin() -> None:
    order = _verify(_order(pin="246810"))
    summary = order.summary()
    text = json.dumps(summary)
    sealed = order.sealed_template
    assert summary["recipient"] == {"rows": 3, "sealed_sha256": sealed.digest()[:16]}
    assert summary["pin"] is True
    assert b64url(sealed.ciphertext)[:20] not in text
    assert b64url(order.pin.hash) not in text and "246810" not in text


def test_a_tampered_order_is_refused_for_its_signature() -> None:
    doc = json.loads(_valid_order())
    doc["order"]["drop"]["lat_e7"] += 1  # 1 cm further south, still canonical
    assert _refusal(canonical_json(doc)).reason == "signature"
    for field, value in (("order_id", "o-8"), ("expires", T0 + 7200), ("drone_id", "sky-2")):
        doc = json.loads(_valid_order())
        doc["order"][field] = value
        assert _refusal(canonical_json(doc)).reason == "signature", field


def test_an_order_signed_by_another_key_is_refused() -> None:
    blob = _order(signer=Ed25519PrivateKey.generate())
    error = _refusal(blob)
    assert error.reason == "signature"
    assert "signature does not verify" in str(error)


@pytest.mark.parametrize("sig", [None, ""])
def test_an_unsigned_order_is_refused(sig: str | None) -> None:
    doc = json.loads(_valid_order())
    if sig is None:
        del doc["sig"]
    else:
        doc["sig"] = sig
    assert _refusal(canonical_json(doc)).reason == "unsigned"


def test_an_order_for_another_drone_is_refused() -> None:
    error = _refusal(_valid_order(), drone_id="sky-2")
    assert error.reason == "wrong-drone"
    assert "addressed to drone 'sky-1', this is 'sky-2'" in str(error)


def test_expiry_and_not_before() -> None:
    blob = _valid_order()
    _verify(blob, now=T0 + 3599)
    assert _refusal(blob, now=T0 + 3600).reason == "expired"
    assert _refusal(blob, now=T0 + 10**6).reason == "expired"
    _verify(blob, now=T0 - CLOCK_SKEW_S)  # the drone's clock a little behind
    error = _refusal(blob, now=T0 - CLOCK_SKEW_S - 1)
    assert error.reason == "not-yet-valid"
    assert f"valid from {T0}" in str(error)


def test_an_unknown_version_is_refused() -> None:
    doc = json.loads(_valid_order())
    doc["v"] = 2
    error = _refusal(_resign(doc))
    assert error.reason == "version"
    assert "version 2 is not 1" in str(error)
    doc["v"] = "1"
    assert _refusal(canonical_json(doc)).reason == "version"
    del doc["v"]
    assert _refusal(canonical_json(doc)).reason == "malformed"


def test_non_canonical_and_oversized_orders_are_refused() -> None:
    doc = json.loads(_valid_order())
    pretty = json.dumps(doc, indent=1).encode()
    assert "canonical" in str(_refusal(pretty))
    assert _refusal(_valid_order() + b"\n").reason == "malformed"
    big = b"{" + b" " * MAX_ORDER_BYTES + b"}"
    error = _refusal(big)
    assert error.reason == "malformed"
    assert f"over the {MAX_ORDER_BYTES}-byte limit" in str(error)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("drop", "lat_e7"), 900_000_001, "order.drop.lat_e7: must be an integer"),
        (("drop", "lon_e7"), 1.5, "non-integer number"),
        (("drop", "alt_cm"), True, "order.drop.alt_cm: must be an integer"),
        (("order_id",), "o 7", "order.order_id: must match"),
        (("nonce",), "AAAA", "order.nonce: must be 16 bytes"),
        (("expires",), T0 + MAX_LIFETIME_S + 1, "at most 604800 s after it"),
        (("window", "end"), T0 + 3601, "order.window: must satisfy"),
        (("template", "epk"), "AAA", "order.template.epk"),
        (("template", "ct"), b64url(b"x" * 100), "order.template.ct: must hold 1 to 16 rows"),
        (("pin",), {"salt": "AA"}, "order.pin: missing scrypt"),
        (("colour",), "blue", "order: unknown field(s) colour"),
    ],
)
def test_malformed_fields_are_named_even_when_signed(
    path: tuple[str, ...], value: Any, message: str
) -> None:
    doc = json.loads(_valid_order())
    target = doc["order"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    error = _refusal(_resign(doc))
    assert error.reason == "malformed"
    assert message in str(error)


def test_a_replayed_order_is_refused_also_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "nonces.json"
    blob = _valid_order()
    # A dry check (order inspect) neither uses the nonce up nor writes the store.
    for _ in range(2):
        _verify(blob, nonces=NonceStore(path), record=False)
    assert not path.exists()
    store = NonceStore(path)
    _verify(blob, nonces=store)
    assert _refusal(blob, nonces=store).reason == "replay"
    restarted = NonceStore(path)  # a new process reading the same file
    error = _refusal(blob, nonces=restarted)
    assert error.reason == "replay"
    assert _refusal(blob, nonces=restarted, record=False).reason == "replay"
    _verify(_order(), nonces=restarted)  # another order (another nonce) is fine
    assert len(NonceStore(path)) == 2
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["nonces.json"]  # no temporary left


def test_nonces_are_pruned_after_their_order_expired(tmp_path: Path) -> None:
    path = tmp_path / "nonces.json"
    store = NonceStore(path)
    _verify(_valid_order(), nonces=store)
    late = _order(
        not_before=T0 + 3600 + NONCE_GRACE_S, expires=T0 + 7200 + NONCE_GRACE_S, window=None
    )
    _verify(late, nonces=store, now=T0 + 3600 + NONCE_GRACE_S)
    remembered = json.loads(path.read_bytes())["nonces"]
    assert list(remembered.values()) == [T0 + 7200 + NONCE_GRACE_S]


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"v": 1, "nonces": []}', b'{"v": 1, "nonces": {"a": 1.5}}', b"[]"]
)
def test_a_corrupt_nonce_store_refuses_rather_than_forgets(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "nonces.json"
    path.write_bytes(content)
    with pytest.raises(OrderError) as info:
        NonceStore(path)
    assert info.value.reason == "nonce-store"
    assert str(path) in str(info.value)


def test_an_unwritable_nonce_store_refuses_the_order(tmp_path: Path) -> None:
    path = tmp_path / "nonces.json"
    store = NonceStore(path)
    (tmp_path / "nonces.json.tmp").mkdir()  # where the new file is written first
    error = _refusal(_valid_order(), nonces=store)
    assert error.reason == "nonce-store"
    assert "cannot be written" in str(error)
    assert _valid_order_nonce() not in store


def _valid_order_nonce() -> bytes:
    return _verify(_valid_order()).nonce


def test_the_template_opens_only_with_the_right_drone_key() -> None:
    order = _verify(_valid_order())
    with pytest.raises(OrderError) as info:
        open_template(order, X25519PrivateKey.generate())
    assert info.value.reason == "sealed"


def test_a_template_moved_into_another_order_does_not_open() -> None:
    """Even the dispatcher's own signature over a moved template does not help: the seal
    binds the order id and drone id."""
    first, second = json.loads(_valid_order()), json.loads(_order(order_id="o-8"))
    second["order"]["template"] = first["order"]["template"]
    order = _verify(_resign(second))
    with pytest.raises(OrderError, match="does not open with this drone's key"):
        open_template(order, _keys()[1])


def test_a_changed_ciphertext_does_not_open() -> None:
    doc = json.loads(_valid_order())
    ct = bytearray(base64.urlsafe_b64decode(doc["order"]["template"]["ct"] + "=="))
    ct[5] ^= 0x01
    doc["order"]["template"]["ct"] = b64url(bytes(ct))
    order = _verify(_resign(doc))
    with pytest.raises(OrderError) as info:
        open_template(order, _keys()[1])
    assert info.value.reason == "sealed"


def test_the_fallback_pin() -> None:
    order = _verify(_order(pin="4711"))
    assert check_pin(order, "4711")
    assert not check_pin(order, "4712")
    assert not check_pin(order, "")
    assert not check_pin(order, "4711 ")
    assert not check_pin(_verify(_valid_order()), "4711")  # no PIN in the order: never valid
    other = _verify(_order(pin="4711"))
    assert other.pin.salt != order.pin.salt and other.pin.hash != order.pin.hash  # salted


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lat": 91.0}, "lat: must be a number within"),
        ({"lon": float("nan")}, "lon: must be a number within"),
        ({"alt_m": float("inf")}, "alt_m: must be a finite number"),
        ({"template": np.zeros((3, 127), np.float32)}, "a template is (n, 128)"),
        ({"template": np.zeros((17, 128), np.float32)}, "1 to 16 rows"),
        ({"template": np.full((1, 128), np.nan, np.float32)}, "finite"),
        ({"pin": "12ab"}, "4 to 12 digits"),
        ({"expires": T0}, "order.expires: must be after not_before"),
        ({"window": (T0 - 1, T0 + 10)}, "order.window"),
        ({"drone_id": "sky 1"}, "order.drone_id: must match"),
    ],
)
def test_create_order_refuses_bad_arguments(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        _order(**changes)
    assert message in str(info.value)


# --- hostile input --------------------------------------------------------------------------


def _only_order_errors(blob: bytes) -> Order | None:
    try:
        return _verify(blob)
    except OrderError as exc:
        assert exc.reason in {"malformed", "version", "unsigned", "signature"}
        return None


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_with_an_order_error(blob: bytes) -> None:
    assert _only_order_errors(blob) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_orders_are_refused_unless_unchanged(data: st.DataObject) -> None:
    blob = bytearray(_valid_order())
    for _ in range(data.draw(st.integers(1, 4))):
        if not blob:
            break
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del blob[i : i + data.draw(st.integers(1, 8))]
        else:
            del blob[i:]
    result = _only_order_errors(bytes(blob))
    assert result is None or bytes(blob) == _valid_order()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from(
        [
            ("order",),
            ("order", "order_id"),
            ("order", "drop"),
            ("order", "drop", "lat_e7"),
            ("order", "window"),
            ("order", "window", "start"),
            ("order", "not_before"),
            ("order", "nonce"),
            ("order", "template"),
            ("order", "template", "ct"),
            ("order", "pin"),
            ("order", "extra"),
        ]
    ),
    value=_json_values,
)
def test_signed_orders_with_any_field_value_decode_or_are_malformed(
    path: tuple[str, ...], value: Any
) -> None:
    """Re-signed by the dispatcher, so the field checks themselves are what is tested."""
    doc = json.loads(_valid_order())
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        order = _verify(_resign(doc))
    except OrderError as exc:
        assert exc.reason == "malformed", exc
    else:
        assert isinstance(order, Order)


def test_the_random_parts_differ_between_orders() -> None:
    a, b = (json.loads(_order()) for _ in range(2))
    assert a["order"]["nonce"] != b["order"]["nonce"]
    assert a["order"]["template"]["epk"] != b["order"]["template"]["epk"]


def test_a_nonce_is_recorded_once_only(tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "nonces.json")
    assert store.remember(b"n" * 16, T0 + 60, T0)
    assert not store.remember(b"n" * 16, T0 + 60, T0)
    assert len(NonceStore(tmp_path / "nonces.json")) == 1


def test_the_summary_is_fit_for_the_audit_trail(tmp_path: Path) -> None:
    from companion.security.audit import AuditTrail, verify_audit

    order = _verify(_order(pin="4711"))
    with AuditTrail(tmp_path / "audit.jsonl") as trail:
        record = trail.append("order-accepted", **order.summary())
    assert record["data"]["recipient"]["rows"] == 3
    assert verify_audit(tmp_path / "audit.jsonl").ok


def test_the_largest_order_fits_the_size_limit() -> None:
    blob = _order(
        order_id="o" * 64,
        template=_template(rows=16),
        pin="123456789012",
        window=None,
    )
    assert len(blob) < MAX_ORDER_BYTES / 2
    assert _verify(blob).sealed_template.rows == 16
