"""The telemetry wire format: every record and batch survives encode/decode unchanged, any
malformed payload is rejected with a SchemaError naming the field, never another exception
(the fuzzer's reproducers are here as regression tests; the fuzz harness itself is
tests/fuzz_schema.py, run briefly by test_telemetry_fuzz.py), and a status's time-to-live
means what the schema says."""

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
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63) + 1, 2**63 - 1), finite, st.text(max_size=8)
    ),
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
    state=st.just("online"),
    ttl_s=st.floats(0.001, schema.MAX_TTL_S),
) | st.builds(
    schema.Status,
    drone_id=ids,
    seq=st.integers(1, 2**53),
    id=st.uuids().map(str),
    t=st.just(T0),
    state=st.just("offline"),
    ttl_s=st.none() | st.floats(0.001, schema.MAX_TTL_S),
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(telemetry, events, statuses))
def test_every_record_round_trips(record: schema.Record) -> None:
    payload = schema.encode(record)
    assert schema.decode(payload) == record
    assert b" " not in payload.split(b'"t"')[0]  # compact separators


def test_encoding_names_version_type_and_identity() -> None:
    record = schema.Status("drone-7", 12, "abc", T0, "online", 90.0)
    assert json.loads(schema.encode(record)) == {
        "v": 2,
        "type": "status",
        "drone_id": "drone-7",
        "seq": 12,
        "id": "abc",
        "t": T0,
        "state": "online",
        "ttl_s": 90.0,
    }


def test_utc_iso_is_utc_with_milliseconds() -> None:
    assert schema.utc_iso(1_795_000_000.25) == "2026-11-18T11:06:40.250Z"


def test_topics() -> None:
    assert schema.topic("d1", "telemetry") == "skycourier/v1/d1/telemetry"
    assert schema.parse_topic("skycourier/v1/d1/events") == ("d1", "events")
    with pytest.raises(ValueError, match="unknown channel 'x'"):
        schema.topic("d1", "x")
    with pytest.raises(schema.SchemaError, match='drone_id: "a/b"'):
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
        ({"v": 3}, r"record\.v: unsupported schema version 3 \(this build reads skycourier"),
        ({"v": True}, r"record\.v: unsupported schema version true"),
        ({"v": 2.0}, r"record\.v: unsupported schema version 2\.0"),
        ({"id": "x" * 65}, r"telemetry\.id: must be 1-64 characters"),
        ({"type": "picture"}, r"record\.type: \"picture\" is not telemetry, event or status"),
        ({"seq": 0}, r"telemetry\.seq: expected an integer >= 1, got 0"),
        ({"seq": True}, r"telemetry\.seq: expected an integer >= 1, got true"),
        ({"seq": None}, r"telemetry\.seq: missing"),
        ({"drone_id": "a b"}, r'telemetry\.drone_id: "a b" is not 1-64 characters'),
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
    with pytest.raises(schema.SchemaError, match=r"status\.ttl_s: missing"):
        schema.decode(b'{"v":2,"type":"status","drone_id":"d","seq":1,"id":"x","t":"%s",'
                      b'"state":"online"}' % T0.encode())  # fmt: skip
    with pytest.raises(schema.SchemaError, match=r"status\.ttl_s: must be above 0"):
        schema.decode(b'{"v":2,"type":"status","drone_id":"d","seq":1,"id":"x","t":"%s",'
                      b'"state":"online","ttl_s":0}' % T0.encode())  # fmt: skip


def test_encode_refuses_what_receivers_would_reject() -> None:
    bad = schema.Telemetry("d1", 1, "x", T0, ground_speed_mps=float("nan"))
    with pytest.raises(schema.SchemaError, match="ground_speed_mps: nan is not a finite number"):
        schema.encode(bad)
    with pytest.raises(schema.SchemaError, match=r"event seq 3: record\.detail\.obj: cannot "
                       "encode object"):  # fmt: skip
        schema.encode(schema.Event("d1", 3, "x", T0, "enter", detail={"obj": object()}))
    with pytest.raises(schema.SchemaError, match=r"detail: cannot encode key 3 \(not a string"):
        schema.encode(schema.Event("d1", 3, "x", T0, "enter", detail={3: "three"}))  # type: ignore[dict-item]


def test_record_on_the_wrong_topic_is_rejected() -> None:
    payload = schema.encode(schema.Status("d1", 1, "x", T0, "online", 90.0))
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


# -- the fuzzer's findings (issue 10, item 13), each once a crash outside SchemaError ------

_HEAD = f'{{"v":2,"type":"telemetry","drone_id":"d1","seq":1,"id":"x","t":"{T0}"'


#: json.loads refuses it itself when the caller's stack is already deep (as under pytest).
_NESTED = r"nested (deeper than 16 levels|too deeply)"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # OverflowError: float() of a 309-digit integer in a number field
        (_HEAD + ',"ground_speed_mps":' + "9" * 309 + "}", r"ground_speed_mps: integer .* ±2\^63"),
        # ValueError: Python refuses to parse an integer of more than 4300 digits
        (_HEAD + ',"mode":' + "1" * 4301 + "}", r"Exceeds the limit \(4300 digits\)"),
        # RecursionError: formatting the error for a 990-deep array in a wrongly typed field
        (_HEAD + ',"gps":{"alarms":' + "[" * 990 + "]" * 990 + "}}", _NESTED),
        (_HEAD + ',"mode":' + "[" * 990 + "]" * 990 + "}", _NESTED),
        # accepted, then not re-encodable: a lone surrogate in a string or a key
        (_HEAD + ',"mode":"\\ud800"}', r"record\.mode: string .* lone UTF-16 surrogate"),
        (_HEAD + ',"detections":{"\\udfff":1}}', r"record\.detections: key .* surrogate"),
        # accepted, then not re-encodable: NaN and infinities from JSON's extensions
        (_HEAD + ',"mode":NaN}', r"record\.mode: nan is not a finite number"),
        (_HEAD + ',"mode":-Infinity}', r"record\.mode: -inf is not a finite number"),
        (_HEAD + ',"mode":1e999}', r"record\.mode: inf is not a finite number"),
        # "v": true equals 1
        (
            f'{{"v":true,"type":"status","drone_id":"d1","seq":1,"id":"x","t":"{T0}",'
            '"state":"offline"}',
            r"record\.v: unsupported schema version true",
        ),
        # a time that a ground tool cannot convert to UTC (OverflowError in astimezone)
        (_HEAD.replace(T0, "0001-01-01T00:00:00+01:00") + "}", r"telemetry\.t: .* out of range"),
        # an id a receiver would have to remember
        (_HEAD.replace('"id":"x"', '"id":"' + "i" * 60_000 + '"') + "}", r"id: must be 1-64"),
    ],
)
def test_fuzzer_reproducers_are_schema_errors(payload: str, message: str) -> None:
    with pytest.raises(schema.SchemaError, match=message):
        schema.decode(payload.encode())
    topic = "skycourier/v1/d1/telemetry"
    with pytest.raises(schema.SchemaError):
        schema.decode_message(topic, payload.encode())


def test_a_deep_value_is_refused_without_recursion() -> None:
    """The 990-deep array built in memory (json.loads may or may not refuse it first,
    depending on the caller's stack): refused by the tree check, which does not recurse,
    with a message that does not either."""
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(schema.SchemaError, match=r"record\.mode\[0\]\[0\].*nested deeper"):
        schema.from_dict({**_valid(), "mode": deep})


def test_an_error_message_is_short_whatever_the_value() -> None:
    deep = {"a": [list(range(100_000))]}
    with pytest.raises(schema.SchemaError) as info:
        schema.decode(json.dumps({**_valid(), "pos": [deep] * 3}).encode())
    assert len(str(info.value)) < 200


def test_version_1_records_still_decode() -> None:
    """A queue written before the upgrade replays version-1 records; they differ only in
    having no ttl_s."""
    v1 = dict(_valid(), v=1)
    assert schema.decode(json.dumps(v1).encode()) == schema.decode(schema.encode(
        schema.decode(json.dumps(v1).encode())))  # fmt: skip
    status = {"v": 1, "type": "status", "drone_id": "d1", "seq": 1, "id": "s", "t": T0,
              "state": "online"}  # fmt: skip
    decoded = schema.decode(json.dumps(status).encode())
    assert isinstance(decoded, schema.Status) and decoded.ttl_s is None
    assert schema.status_expires_at(decoded, 1e9) is None  # a v1 status never expires
    assert json.loads(schema.encode(decoded))["v"] == 1  # what only v1 can say is written so


def test_encode_bounds_a_record_to_fit_a_message() -> None:
    big = schema.Event("d1", 7, "x", T0, "note", detail={"text": "y" * schema.MAX_RECORD_BYTES})
    with pytest.raises(schema.RecordTooLarge, match=r"event seq 7: \d+ bytes encoded") as info:
        schema.encode(big)
    assert info.value.size > schema.MAX_RECORD_BYTES
    largest = schema.Event("d1", 7, "x", T0, "note", detail={"text": ""})
    room = schema.MAX_RECORD_BYTES - len(schema.encode(largest))
    fits = schema.Event("d1", 7, "x", T0, "note", detail={"text": "y" * room})
    assert len(schema.encode(fits)) == schema.MAX_RECORD_BYTES
    batch = schema.encode_batch("d1" * 32, [schema.encode(fits)])  # the longest drone id
    assert len(batch) <= schema.MAX_MESSAGE_BYTES


# -- batches --------------------------------------------------------------------------------

TOPIC = "skycourier/v1/d1/telemetry"


def _samples(n: int, start: int = 1) -> list[schema.Telemetry]:
    return [
        schema.Telemetry("d1", seq, f"id-{seq}", T0, phase="descend", heading_deg=90.0)
        for seq in range(start, start + n)
    ]


def test_a_batch_carries_records_in_order() -> None:
    records = _samples(5)
    payload = schema.encode_batch("d1", [schema.encode(r) for r in records])
    assert payload.startswith(b'{"v":2,"type":"batch","drone_id":"d1","records":[{"v":2,')
    assert len(payload) == schema.batch_size("d1", [schema.encode(r) for r in records])
    assert schema.decode_message(TOPIC, payload) == records
    # a single record is a message too (what version-1 drones send)
    assert schema.decode_message(TOPIC, schema.encode(records[0])) == records[:1]


def _batch(items: list[dict], **envelope: object) -> bytes:
    obj = {"v": 2, "type": "batch", "drone_id": "d1", "records": items, **envelope}
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_batch([]), r"batch\.records: expected an array of 1-256 records, got 0 records"),
        (_batch([{}] * 257), r"got 257 records"),
        (_batch([], records=None), r"batch\.records: missing"),
        (_batch([], records={"a": 1}), r"batch\.records: expected an array .* got an object"),
        (_batch([], v=1), r"batch\.v: unsupported batch version 1"),
        (_batch([], v=True), r"batch\.v: unsupported batch version true"),
        (_batch([], drone_id="d2"), r'batch\.drone_id: "d2" is not \'d1\''),
        (
            _batch([json.loads(schema.encode(r)) for r in _samples(2)][::-1]),
            r"batch\.records\[1\]\.telemetry\.seq: 1 after 2",
        ),
        (
            _batch([json.loads(schema.encode(_samples(1)[0])), {"v": 2, "type": "telemetry"}]),
            r"batch\.records\[1\]\.telemetry\.drone_id: missing",
        ),
        (
            _batch([json.loads(schema.encode(schema.Event("d1", 1, "e", T0, "enter")))]),
            r"batch\.records\[0\]\.event from drone 'd1' arrived on the wrong topic",
        ),
        (
            _batch([json.loads(schema.encode(schema.Status("d1", 1, "s", T0, "offline")))]),
            r"batch\.records\[0\]\.status: a status is never batched",
        ),
        (
            _batch([json.loads(schema.encode(schema.Telemetry("d2", 1, "t", T0)))], drone_id="d1"),
            r"batch\.records\[0\]\.telemetry from drone 'd2' arrived on the wrong topic",
        ),
    ],
)
def test_malformed_batches_are_named(payload: bytes, message: str) -> None:
    with pytest.raises(schema.SchemaError, match=message):
        schema.decode_message(TOPIC, payload)


def test_encode_batch_checks_its_bounds() -> None:
    with pytest.raises(schema.SchemaError, match="a batch holds 1-256 records, not 0"):
        schema.encode_batch("d1", [])
    with pytest.raises(schema.SchemaError, match="more than a message's 10240"):
        schema.encode_batch("d1", [b"x" * 5000, b"y" * 5200])
    with pytest.raises(schema.SchemaError, match="drone_id"):
        schema.encode_batch("a/b", [b"{}"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(telemetry, events), min_size=1, max_size=12))
def test_every_batch_round_trips(records: list[schema.Record]) -> None:
    kind = records[0].type
    same = [r for r in records if r.type == kind]
    fixed = [
        type(r)(**{**r.__dict__, "drone_id": "d1", "seq": i + 1})  # type: ignore[arg-type]
        for i, r in enumerate(same)
    ]
    payloads = [schema.encode(r) for r in fixed]
    if schema.batch_size("d1", payloads) > schema.MAX_MESSAGE_BYTES:
        return
    name = schema.topic("d1", schema.CHANNEL_OF[kind])
    assert schema.decode_message(name, schema.encode_batch("d1", payloads)) == fixed


# -- status time-to-live ---------------------------------------------------------------------


def test_status_expiry_takes_the_earlier_clock() -> None:
    said = schema.parse_time(T0)
    assert said is not None
    online = schema.Status("d1", 1, "s", T0, "online", 90.0)
    # live: received as said
    assert schema.status_expires_at(online, said + 0.2) == pytest.approx(said + 90.0)
    # retained, delivered an hour later: expired long ago
    assert schema.status_expires_at(online, said + 3600) == pytest.approx(said + 90.0)
    # a drone clock running an hour ahead cannot stretch it past arrival + ttl
    assert schema.status_expires_at(online, said - 3600) == pytest.approx(said - 3600 + 90.0)
    assert schema.status_expires_at(schema.Status("d1", 1, "s", T0, "offline"), said) is None


def test_parse_time() -> None:
    assert schema.parse_time("1970-01-01T00:00:01.500Z") == 1.5
    assert schema.parse_time("1970-01-01T01:00:00+01:00") == 0.0
    assert schema.parse_time("1970-01-01T00:00:00") is None  # no zone
    assert schema.parse_time("yesterday") is None
