"""The telemetry wire format: every record survives encode/decode unchanged, and any malformed
payload is rejected with a SchemaError naming the field, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.telemetry import schema

T0 = "2026-11-27T21:44:44.123Z"

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
maybe = st.one_of(st.none(), finite)
ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
names = st.text(max_size=12)

positions = st.builds(
    schema.Position,
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    alt_msl_m=finite,
    alt_rel_m=finite,
)
telemetry = st.builds(
    schema.Telemetry,
    drone_id=ids,
    seq=st.integers(1, 2**53),
    id=st.uuids().map(str),
    t=st.just(T0),
    phase=st.one_of(st.none(), names),
    armed=st.booleans(),
    mode=st.text(min_size=1, max_size=12),
    position=st.one_of(st.none(), positions),
    heading_deg=st.one_of(st.none(), st.floats(0, 360)),
    ground_speed_mps=maybe,
    vertical_speed_mps=maybe,
    battery=st.builds(
        schema.Battery, pct=st.one_of(st.none(), st.integers(0, 100)), voltage_v=maybe
    ),
    gps=st.builds(
        schema.GpsIntegrity,
        fix_type=st.integers(0, 8),
        satellites=st.one_of(st.none(), st.integers(0, 40)),
        alarms=st.lists(st.sampled_from(["divergence", "jump", "time"]), unique=True).map(tuple),
    ),
    detections=st.dictionaries(names, st.integers(0, 50), max_size=4),
    link=st.one_of(
        st.none(),
        st.builds(
            schema.LinkQuality,
            rssi_dbm=st.one_of(st.none(), st.integers(-113, -51)),
            rsrp_dbm=maybe,
            sinr_db=maybe,
        ),
    ),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), finite, st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)
events = st.builds(
    schema.Event,
    drone_id=ids,
    seq=st.integers(1, 2**53),
    id=st.uuids().map(str),
    t=st.just(T0),
    kind=st.text(max_size=20),
    mission_id=st.one_of(st.none(), names),
    phase=st.one_of(st.none(), names),
    detail=st.dictionaries(names, json_values, max_size=4),
)
statuses = st.builds(
    schema.Status,
    drone_id=ids,
    seq=st.integers(1, 2**53),
    id=st.uuids().map(str),
    t=st.just(T0),
    state=st.sampled_from(schema.STATUS_STATES),
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(telemetry, events, statuses))
def test_every_record_round_trips(record: schema.Record) -> None:
    payload = schema.encode(record)
    assert schema.decode(payload) == record
    assert b" " not in payload.split(b'"t"')[0]  # compact separators


def test_encoding_names_version_type_and_identity() -> None:
    record = schema.Status("drone-7", 12, "abc", T0, "online")
    assert json.loads(schema.encode(record)) == {
        "v": 1,
        "type": "status",
        "drone_id": "drone-7",
        "seq": 12,
        "id": "abc",
        "t": T0,
        "state": "online",
    }


def test_utc_iso_is_utc_with_milliseconds() -> None:
    assert schema.utc_iso(1_795_000_000.25) == "2026-11-18T11:06:40.250Z"


def test_topics() -> None:
    assert schema.topic("d1", "telemetry") == "skycourier/v1/d1/telemetry"
    assert schema.parse_topic("skycourier/v1/d1/events") == ("d1", "events")
    with pytest.raises(ValueError, match="unknown channel 'x'"):
        schema.topic("d1", "x")
    with pytest.raises(schema.SchemaError, match="drone_id: 'a/b'"):
        schema.topic("a/b", "status")
    with pytest.raises(schema.SchemaError, match="is not skycourier/v1/<drone_id>/<channel>"):
        schema.parse_topic("other/v1/d1/events")


def _valid() -> dict:
    record = schema.Telemetry(
        "d1", 5, "id-5", T0, position=schema.Position(52.0, 4.0, 10.0, 5.0), heading_deg=90.0
    )
    return json.loads(schema.encode(record))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, r"record\.v: unsupported schema version 2 \(this build reads skycourier"),
        ({"type": "picture"}, r"record\.type: \"picture\" is not telemetry, event or status"),
        ({"seq": 0}, r"telemetry\.seq: expected an integer >= 1, got 0"),
        ({"seq": True}, r"telemetry\.seq: expected an integer >= 1, got true"),
        ({"seq": None}, r"telemetry\.seq: missing"),
        ({"drone_id": "a b"}, r"telemetry\.drone_id: 'a b' is not 1-64 characters"),
        ({"t": "yesterday"}, r"telemetry\.t: \"yesterday\" is not an ISO 8601 time"),
        ({"t": "2026-11-27T21:44:44"}, r"telemetry\.t: .* has no time zone"),
        ({"pos": {"lat": 91, "lon": 0, "alt_msl_m": 0, "alt_rel_m": 0}}, r"pos\.lat: .*91"),
        ({"pos": {"lat": 1, "lon": 0, "alt_msl_m": "high", "alt_rel_m": 0}}, r"pos\.alt_msl_m"),
        ({"pos": [1, 2]}, r"telemetry\.pos: expected an object, got an array"),
        ({"heading_deg": 400}, r"telemetry\.heading_deg: expected a number in \[0\.0, 360\.0\]"),
        ({"battery": {"pct": -1}}, r"telemetry\.battery\.pct: expected an integer >= 0"),
        ({"gps": {"alarms": "jump"}}, r"telemetry\.gps\.alarms: expected an array of strings"),
        ({"gps": {"integrity": "ok", "alarms": ["jump"]}}, r"gps\.integrity: \"ok\" contradicts"),
        ({"detections": {"person": -2}}, r"telemetry\.detections\.person: expected a count"),
        ({"link": {"rssi_dbm": "strong"}}, r"telemetry\.link\.rssi_dbm: expected an integer"),
    ],
)
def test_malformed_fields_are_named(change: dict, message: str) -> None:
    obj = {**_valid(), **change}
    with pytest.raises(schema.SchemaError, match=message):
        schema.decode(json.dumps(obj).encode())


def test_malformed_payloads_say_why() -> None:
    with pytest.raises(schema.SchemaError, match="not JSON"):
        schema.decode(b'{"v":1,')
    with pytest.raises(schema.SchemaError, match="not UTF-8"):
        schema.decode(b"\xff\xfe")
    with pytest.raises(schema.SchemaError, match="nested too deeply"):
        schema.decode(b"[" * 50_000)
    with pytest.raises(schema.SchemaError, match="exceeds"):
        schema.decode(b" " * (schema.MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(schema.SchemaError, match=r'status\.state: "away"'):
        schema.decode(b'{"v":1,"type":"status","drone_id":"d","seq":1,"id":"x","t":"%s",'
                      b'"state":"away"}' % T0.encode())  # fmt: skip


def test_encode_refuses_what_receivers_would_reject() -> None:
    bad = schema.Telemetry("d1", 1, "x", T0, ground_speed_mps=float("nan"))
    with pytest.raises(schema.SchemaError, match="ground_speed_mps: expected a finite number"):
        schema.encode(bad)
    with pytest.raises(schema.SchemaError, match="event seq 3: cannot encode"):
        schema.encode(schema.Event("d1", 3, "x", T0, "enter", detail={"obj": object()}))


def test_record_on_the_wrong_topic_is_rejected() -> None:
    payload = schema.encode(schema.Status("d1", 1, "x", T0, "online"))
    assert schema.decode_for("skycourier/v1/d1/status", payload).state == "online"
    with pytest.raises(schema.SchemaError, match="arrived on the wrong topic"):
        schema.decode_for("skycourier/v1/d2/status", payload)
    with pytest.raises(schema.SchemaError, match="wrong topic"):
        schema.decode_for("skycourier/v1/d1/telemetry", payload)


def test_jsonable_makes_bus_details_safe() -> None:
    from companion.mission.events import Phase

    detail = {"phase": Phase.CRUISE, "reasons": ("a", "b"), "x": float("inf"), 3: object}
    out = schema.jsonable(detail)
    assert out["phase"] == "cruise" and out["reasons"] == ["a", "b"] and out["x"] is None
    json.dumps(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(payload: bytes) -> None:
    try:
        schema.decode(payload)
    except schema.SchemaError as exc:
        assert str(exc)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "type", "drone_id", "seq", "id", "t", "pos", "gps", "link",
                         "battery", "detections", "heading_deg", "state", "kind", "detail"]),
        json_values,
    ),
    st.sampled_from(["telemetry", "event", "status"]),
)  # fmt: skip
def test_arbitrary_json_objects_never_crash(obj: dict, kind: str) -> None:
    obj = {"v": 1, "type": kind, "drone_id": "d", "seq": 1, "id": "x", "t": T0, **obj}
    try:
        schema.decode(json.dumps(obj).encode())
    except schema.SchemaError as exc:
        assert str(exc)
