"""`skycourier track` without a broker: the line format, de-duplication of re-sent records,
and malformed messages reported instead of crashing the watch."""

from __future__ import annotations

import argparse
import io

import pytest

from companion.telemetry import schema
from companion.track import Tracker, add_arguments, format_record, parse_broker, run_track

T0 = "2026-11-27T21:44:44.123Z"


def _sample(seq: int = 42, record_id: str = "a") -> schema.Telemetry:
    return schema.Telemetry(
        "d1", seq, record_id, T0, phase="descend", armed=True, mode="GUIDED",
        position=schema.Position(-35.363261, 149.16523, 630.25, 12.5), heading_deg=271.6,
        ground_speed_mps=0.4, vertical_speed_mps=-1.25,
        battery=schema.Battery(87, 15.82), gps=schema.GpsIntegrity(3, 12, ("divergence",)),
        detections={"person": 1}, link=schema.LinkQuality(-71, -98.0, 12.5),
    )  # fmt: skip


def test_format_telemetry() -> None:
    assert format_record(_sample()) == (
        "2026-11-27T21:44:44.123Z d1 #42 TEL descend GUIDED armed"
        " | -35.363261,149.165230 alt 12.5 m rel (630.2 MSL)"
        " | hdg 272 gs 0.4 m/s vs -1.2 m/s | bat 87% 15.82 V"
        " | gps fix 3 sats 12 ALARM divergence | seen person=1"
        " | lte rssi -71 rsrp -98 sinr 12.5"
    )


def test_format_sparse_telemetry_event_and_status() -> None:
    bare = schema.Telemetry("d1", 1, "x", T0)
    assert format_record(bare) == (
        f"{T0} d1 #1 TEL idle UNKNOWN | no position | hdg ? gs ? vs ? | bat ? ?"
        " | gps fix 0 sats ? ok"
    )
    event = schema.Event("d1", 9, "e", T0, "abort", "m1", "abort", {"reason": "wind", "n": 2})
    assert format_record(event) == (
        f'{T0} d1 #9 EVENT abort [abort mission m1] {{"n":2,"reason":"wind"}}'
    )
    assert format_record(schema.Event("d1", 10, "e2", T0, "boot")) == f"{T0} d1 #10 EVENT boot"
    assert format_record(schema.Status("d1", 9, "s", T0, "offline")) == f"{T0} d1 #9 STATUS offline"


def test_tracker_drops_repeats_by_id() -> None:
    tracker = Tracker(window=3)
    topic = "skycourier/v1/d1/telemetry"
    first = schema.encode(_sample(1, "a"))
    assert tracker.receive(topic, first) == _sample(1, "a")
    assert tracker.receive(topic, first) is None
    assert tracker.duplicates == 1
    # A drone whose queue file was lost restarts at seq 1 with new ids: still shown.
    assert tracker.receive(topic, schema.encode(_sample(1, "b"))) is not None
    status = schema.encode(schema.Status("d1", 1, "s", T0, "online"))
    assert tracker.receive("skycourier/v1/d1/status", status) is not None
    assert tracker.receive("skycourier/v1/d1/status", status) is not None  # status: always


def test_tracker_reports_malformed_messages() -> None:
    tracker = Tracker()
    with pytest.raises(schema.SchemaError, match="not JSON"):
        tracker.receive("skycourier/v1/d1/telemetry", b"garbage")
    with pytest.raises(schema.SchemaError, match="wrong topic"):
        tracker.receive("skycourier/v1/d2/telemetry", schema.encode(_sample()))
    assert tracker.malformed == 2


def test_parse_broker() -> None:
    assert parse_broker("10.0.0.5:1884") == ("10.0.0.5", 1884)
    assert parse_broker("broker.local") == ("broker.local", 1883)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_broker("host:99999")


def test_bad_arguments_exit_2_with_the_reason() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    err = io.StringIO()
    assert run_track(parser.parse_args(["--drone", "a/b"]), io.StringIO(), err) == 2
    assert "drone_id: 'a/b'" in err.getvalue()
    err = io.StringIO()
    assert (
        run_track(parser.parse_args(["--drone", "d1", "--broker", "h:0"]), io.StringIO(), err) == 2
    )
    assert "--broker 'h:0'" in err.getvalue()
