"""`skycourier track` without a broker: the line format, batches, de-duplication of re-sent
records, malformed messages reported instead of crashing the watch, and a status's
time-to-live honoured (with a broker: the watch says a drone that died without a will has
expired)."""

from __future__ import annotations

import argparse
import io
import threading
import time

import pytest

from companion.telemetry import schema
from companion.track import (
    Tracker,
    add_arguments,
    format_expired,
    format_record,
    parse_broker,
    run_track,
)

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
    online = schema.Status("d1", 9, "s", T0, "online", 90.0)
    assert format_record(online) == f"{T0} d1 #9 STATUS online (ttl 90 s)"


def test_tracker_drops_repeats_by_id() -> None:
    tracker = Tracker(window=3)
    topic = "skycourier/v1/d1/telemetry"
    first = schema.encode(_sample(1, "a"))
    assert tracker.receive(topic, first) == [_sample(1, "a")]
    assert tracker.receive(topic, first) == []
    assert tracker.duplicates == 1
    # A drone whose queue file was lost restarts at seq 1 with new ids: still shown.
    assert tracker.receive(topic, schema.encode(_sample(1, "b"))) != []
    status = schema.encode(schema.Status("d1", 1, "s", T0, "online", 90.0))
    assert tracker.receive("skycourier/v1/d1/status", status) != []
    assert tracker.receive("skycourier/v1/d1/status", status) != []  # status: always


def test_tracker_reads_batches_and_drops_records_re_sent_in_a_new_batch() -> None:
    """After a lost acknowledgement the drone re-sends the batch's records, possibly with
    newer ones: only the new ones are shown."""
    tracker = Tracker()
    topic = "skycourier/v1/d1/telemetry"
    records = [_sample(seq, f"r{seq}") for seq in range(1, 6)]
    first = schema.encode_batch("d1", [schema.encode(r) for r in records[:3]])
    again = schema.encode_batch("d1", [schema.encode(r) for r in records[1:]])
    assert tracker.receive(topic, first) == records[:3]
    assert tracker.receive(topic, again) == records[3:]
    assert tracker.duplicates == 2


def test_tracker_reports_malformed_messages() -> None:
    tracker = Tracker()
    with pytest.raises(schema.SchemaError, match="not JSON"):
        tracker.receive("skycourier/v1/d1/telemetry", b"garbage")
    with pytest.raises(schema.SchemaError, match="wrong topic"):
        tracker.receive("skycourier/v1/d2/telemetry", schema.encode(_sample()))
    assert tracker.malformed == 2


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_online_status_expires_after_its_ttl_unless_renewed() -> None:
    said = schema.parse_time(T0)
    assert said is not None
    clock = Clock(said + 1.0)
    tracker = Tracker(clock=clock)
    topic = "skycourier/v1/d1/status"
    online = schema.Status("d1", 5, "s1", T0, "online", 90.0)
    tracker.receive(topic, schema.encode(online))
    clock.now = said + 89.0
    assert tracker.expired() == []
    clock.now = said + 90.5
    assert tracker.expired() == [(online, said + 90.0)]
    assert tracker.expired() == []  # reported once
    # A renewed status starts over; offline never expires.
    later = schema.Status("d1", 6, "s2", schema.utc_iso(said + 100), "online", 90.0)
    clock.now = said + 100.0
    tracker.receive(topic, schema.encode(later))
    clock.now = said + 150.0
    assert tracker.expired() == []
    tracker.receive(topic, schema.encode(schema.Status("d1", 7, "s3", T0, "offline")))
    clock.now = said + 10_000.0
    assert tracker.expired() == []


def test_a_retained_online_from_long_ago_has_expired_on_arrival() -> None:
    """The modem path's dead drone: its last retained "online" is delivered to a tool that
    starts watching an hour later."""
    said = schema.parse_time(T0)
    assert said is not None
    tracker = Tracker(clock=Clock(said + 3600.0))
    online = schema.Status("d1", 5, "s1", T0, "online", 90.0)
    tracker.receive("skycourier/v1/d1/status", schema.encode(online))
    ((status, at),) = tracker.expired()
    assert status == online and at == pytest.approx(said + 90.0)
    assert format_expired(status, at) == (
        "2026-11-27T21:46:14.123Z d1 #5 STATUS expired: online said at "
        f"{T0} with a ttl of 90 s, nothing since"
    )


def test_the_watch_says_a_dead_drone_expired(mosquitto) -> None:
    """Through a broker: a drone on the modem path says "online" (retained, with a short
    ttl) and dies without a retained will; `skycourier track` started later prints the
    status and then that it expired."""
    from paho.mqtt.client import CallbackAPIVersion, Client

    drone = Client(CallbackAPIVersion.VERSION2, client_id="dead-drone")
    drone.connect(mosquitto.host, mosquitto.port)
    drone.loop_start()
    said = schema.utc_iso(time.time())
    online = schema.encode(schema.Status("d9", 3, "s", said, "online", 1.0))
    drone.publish("skycourier/v1/d9/status", online, qos=1, retain=True).wait_for_publish(5)
    drone.loop_stop()
    drone.disconnect()

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--drone", "d9", "--broker", f"{mosquitto.host}:{mosquitto.port}", "--count", "2"]
    )
    out, err = io.StringIO(), io.StringIO()
    done = threading.Event()
    watch = threading.Thread(target=lambda: run_track(args, out, err, done))
    watch.start()
    watch.join(30.0)
    done.set()
    watch.join(5.0)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{said} d9 #3 STATUS online (ttl 1 s)", lines
    assert "d9 #3 STATUS expired: online said at" in lines[1], lines


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
    assert 'drone_id: "a/b"' in err.getvalue()
    err = io.StringIO()
    assert (
        run_track(parser.parse_args(["--drone", "d1", "--broker", "h:0"]), io.StringIO(), err) == 2
    )
    assert "--broker 'h:0'" in err.getvalue()
