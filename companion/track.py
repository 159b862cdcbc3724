"""`skycourier track`: watch a drone's live telemetry, events and status from an MQTT broker.

One line per record (or the record's JSON with ``--json``), in arrival order; a batch message
(schema version 2) prints each of its records. Records are delivered at least once, so a
record re-sent after an outage arrives twice with the same id: `Tracker` drops the repeat. A
malformed message is reported on stderr with the reason and skipped; it never stops the watch.

Liveness: an ``online`` status is believed until its time-to-live runs out
(`schema.status_expires_at`), unless a newer status came; then a line says so (``STATUS
expired``, or with ``--json`` an object of type ``status-expired``). A drone on the modem
path cannot leave a retained last will, so without this a dead drone's last ``online`` would
be shown for ever.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TextIO

from companion.telemetry import schema
from companion.telemetry.transport import PahoTransport

#: Ids remembered for de-duplication: hours of 5 Hz telemetry, a few MB at most.
DEDUP_WINDOW = 100_000
#: Drones whose status is remembered (a wildcard watch on a busy broker must stay bounded).
MAX_DRONES = 10_000


class Tracker:
    """Decodes and de-duplicates records received on drones' topics and follows each
    drone's status and its time-to-live (sans-I/O: `clock` is the receiver's wall clock)."""

    def __init__(self, window: int = DEDUP_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.clock = clock
        self._seen: OrderedDict[str, None] = OrderedDict()
        # drone -> (latest status, unix time it stops meaning online or None, reported expired)
        self._status: OrderedDict[str, tuple[schema.Status, float | None, bool]] = OrderedDict()
        self.duplicates = 0
        self.malformed = 0

    def receive(self, topic: str, payload: bytes) -> list[schema.Record]:
        """The records one message carries that were not seen before, in order (a status is
        always returned: it is state, re-announced on purpose).

        Raises schema.SchemaError (naming the field) for a message that is not valid for its
        topic; the caller reports it.
        """
        try:
            records = schema.decode_message(topic, payload)
        except schema.SchemaError:
            self.malformed += 1
            raise
        fresh: list[schema.Record] = []
        for record in records:
            if isinstance(record, schema.Status):
                expires = schema.status_expires_at(record, self.clock())
                self._status[record.drone_id] = (record, expires, False)
                self._status.move_to_end(record.drone_id)
                if len(self._status) > MAX_DRONES:
                    self._status.popitem(last=False)
                fresh.append(record)
            elif record.id in self._seen:
                self.duplicates += 1
            else:
                self._seen[record.id] = None
                if len(self._seen) > self.window:
                    self._seen.popitem(last=False)
                fresh.append(record)
        return fresh

    def expired(self) -> list[tuple[schema.Status, float]]:
        """Online statuses whose time-to-live has run out since the last call, each with the
        time it did (each reported once; a newer status starts over)."""
        now = self.clock()
        out: list[tuple[schema.Status, float]] = []
        for status, expires, reported in self._status.values():
            if expires is not None and not reported and now >= expires:
                out.append((status, expires))
        for status, expires in out:
            self._status[status.drone_id] = (status, expires, True)
        return out


def format_expired(status: schema.Status, expired_at: float) -> str:
    """The line for a drone whose online status ran out: it is not online any more."""
    return (
        f"{schema.utc_iso(expired_at)} {status.drone_id} #{status.seq} STATUS expired: online"
        f" said at {status.t} with a ttl of {status.ttl_s:g} s, nothing since"
    )


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "?" if value is None else f"{value:{fmt}}{unit}"


def format_record(record: schema.Record) -> str:
    """One human line for a record: time, drone, seq, then what it says."""
    head = f"{record.t} {record.drone_id} #{record.seq}"
    if isinstance(record, schema.Status):
        ttl = "" if record.ttl_s is None else f" (ttl {record.ttl_s:g} s)"
        return f"{head} STATUS {record.state}{ttl}"
    if isinstance(record, schema.Event):
        where = " ".join(
            part
            for part in (
                record.phase or "",
                f"mission {record.mission_id}" if record.mission_id else "",
            )
            if part
        )
        detail = (
            " " + json.dumps(record.detail, separators=(",", ":"), sort_keys=True)
            if record.detail
            else ""
        )
        return f"{head} EVENT {record.kind}" + (f" [{where}]" if where else "") + detail
    parts = [f"{head} TEL {record.phase or 'idle'} {record.mode}{' armed' if record.armed else ''}"]
    pos = record.position
    if pos is None:
        parts.append("no position")
    else:
        parts.append(
            f"{pos.lat:.6f},{pos.lon:.6f} alt {pos.alt_rel_m:.1f} m rel ({pos.alt_msl_m:.1f} MSL)"
        )
    parts.append(
        f"hdg {_num(record.heading_deg, '.0f')} gs {_num(record.ground_speed_mps, '.1f', ' m/s')}"
        f" vs {_num(record.vertical_speed_mps, '+.1f', ' m/s')}"
    )
    parts.append(
        f"bat {_num(record.battery.pct, 'd', '%')} {_num(record.battery.voltage_v, '.2f', ' V')}"
    )
    gps = record.gps
    integrity = "ok" if not gps.alarms else "ALARM " + ",".join(gps.alarms)
    parts.append(f"gps fix {gps.fix_type} sats {_num(gps.satellites, 'd')} {integrity}")
    if record.detections:
        parts.append("seen " + ",".join(f"{k}={v}" for k, v in sorted(record.detections.items())))
    if record.link is not None:
        link = record.link
        parts.append(
            f"lte rssi {_num(link.rssi_dbm, 'd')} rsrp {_num(link.rsrp_dbm, '.0f')}"
            f" sinr {_num(link.sinr_db, '.1f')}"
        )
    return " | ".join(parts)


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, port 1883) as (host, port); ValueError says what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        return text, 1883
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--broker {text!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `track` subcommand's options."""
    parser.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker HOST:PORT")
    parser.add_argument("--drone", required=True, help="drone id to watch ('+' for every drone)")
    parser.add_argument("--json", action="store_true", help="print each record as JSON")
    parser.add_argument(
        "--count", type=int, default=None, help="exit after this many records (default: never)"
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds before reporting no broker"
    )


def run_track(
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stop: threading.Event | None = None,
) -> int:
    """Print records until Ctrl-C, `--count` records, or `stop` is set (for a caller running
    the watch in a thread); 2 for a bad --broker or --drone."""
    try:
        host, port = parse_broker(args.broker)
        if args.drone != "+":
            schema.check_drone_id(args.drone)
    except ValueError as exc:
        print(f"skycourier track: {exc}", file=err)
        return 2
    tracker = Tracker()
    done = stop or threading.Event()
    shown = 0
    lock = threading.Lock()

    def show(line: str) -> None:
        nonlocal shown
        with lock:
            if done.is_set():
                return
            print(line, file=out, flush=True)
            shown += 1
            if args.count is not None and shown >= args.count:
                done.set()

    def report_expired() -> None:
        with lock:
            expired = tracker.expired()
        for status, at in expired:
            if args.json:
                line = json.dumps(
                    {
                        "type": "status-expired",
                        "drone_id": status.drone_id,
                        "seq": status.seq,
                        "t": status.t,
                        "ttl_s": status.ttl_s,
                        "expired_at": schema.utc_iso(at),
                    },
                    separators=(",", ":"),
                )
            else:
                line = format_expired(status, at)
            show(line)

    def on_message(topic: str, payload: bytes) -> None:
        try:
            with lock:
                records = tracker.receive(topic, payload)
        except schema.SchemaError as exc:
            print(f"skipping a malformed message on {topic}: {exc}", file=err, flush=True)
            return
        for record in records:
            if args.json:
                show(json.dumps(schema.to_dict(record), separators=(",", ":")))
            else:
                show(format_record(record))
        if any(isinstance(r, schema.Status) for r in records):
            report_expired()  # a retained online that ran out long ago says so at once

    transport = PahoTransport(host, port, f"skycourier-track-{uuid.uuid4().hex[:12]}")
    try:
        # Status last: once its retained message arrives, the broker has processed the
        # subscriptions before it (packets of one connection are handled in order).
        for channel in ("telemetry", "events", "status"):
            transport.subscribe(f"{schema.TOPIC_ROOT}/{args.drone}/{channel}", on_message)
        if not transport.wait_connected(args.connect_timeout):
            print(
                f"skycourier track: {transport.last_error or 'no answer from the broker'};"
                " still trying (Ctrl-C to stop)",
                file=err,
                flush=True,
            )
        while not done.wait(1.0):
            report_expired()
    except KeyboardInterrupt:
        pass
    finally:
        transport.close()
    if tracker.duplicates:
        print(f"({tracker.duplicates} duplicate records dropped)", file=err)
    return 0
