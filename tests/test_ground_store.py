"""The ground store on SQLite and PostgreSQL: migrations, exactly-once ingest, liveness by the
status time-to-live, orders moved on by the drone's events, tracks, events, the audit log,
and hostile text kept as data."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="install the ground extra: pip install -e '.[ground]'")

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from companion.telemetry import schema
from ground import db
from ground.models import Base, EventRecord
from ground.store import OrderExists, Received, Store, StoreError, liveness
from tests.ground_fixtures import db_url, pg_url  # noqa: F401

T0 = 1_795_000_000.0  # a fixed Unix time: 2026-11-18


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def iso(ts: float) -> str:
    return schema.utc_iso(ts)


def sample(drone: str, seq: int, at: float, **kw: object) -> schema.Telemetry:
    fields: dict[str, object] = {
        "position": schema.Position(52.0 + seq * 1e-4, 4.0, 12.0, 10.0),
        "battery": schema.Battery(80, 15.9),
        "gps": schema.GpsIntegrity(3, 11),
        "phase": "cruise",
        "mode": "AUTO",
        "armed": True,
        **kw,
    }
    return schema.Telemetry(drone, seq, schema.new_id(), iso(at), **fields)  # type: ignore[arg-type]


def event(
    drone: str, seq: int, at: float, kind: str, mission: str | None = None, **detail: object
) -> schema.Event:
    return schema.Event(drone, seq, schema.new_id(), iso(at), kind, mission, "release", detail)


def status(
    drone: str, seq: int, at: float, state: str = "online", ttl: float | None = 90.0
) -> schema.Status:
    return schema.Status(drone, seq, schema.new_id(), iso(at), state, ttl)


def got(records: list[schema.Record], at: float = T0) -> list[Received]:
    return [Received(r, at) for r in records]


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:  # noqa: F811
    opened = Store.open(db_url, clock=Clock())
    yield opened
    opened.close()


# -- schema and migrations ----------------------------------------------------------------


def test_the_migration_builds_exactly_the_models_and_runs_once(db_url: str) -> None:  # noqa: F811
    db.upgrade(db_url)
    db.upgrade(db_url)  # nothing to do the second time
    engine = db.create_engine(db_url)
    try:
        assert db.current_revision(engine) == "0002"
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            tables = set(inspect(conn).get_table_names())
        assert {
            "drones", "telemetry", "events", "statuses", "orders", "handovers",
            "operator_accounts", "audit_log", "commands",
        } <= tables  # fmt: skip
    finally:
        engine.dispose()


def test_a_database_of_the_first_schema_upgrades_keeping_its_rows(db_url: str) -> None:  # noqa: F811
    db.upgrade(db_url, "0001")
    with Store(db.create_engine(db_url)) as old:
        old.create_order("o-1", "drone-1", "ab" * 32, created_by="alice")
    with Store.open(db_url) as store:  # opening migrates to the newest schema
        assert db.current_revision(store.engine) == "0002"
        order = store.order("o-1")
        assert order is not None and (order.drone_id, order.created_by) == ("drone-1", "alice")
        assert store.drone_keys("drone-1") is None  # known, not registered


def test_two_processes_starting_at_once_migrate_once(db_url: str) -> None:  # noqa: F811
    errors: list[BaseException] = []

    def run() -> None:
        try:
            db.upgrade(db_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    engine = db.create_engine(db_url)
    assert db.current_revision(engine) == "0002"
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u:secret@h/db", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("postgresql+psycopg2://u:secret@h/db", "psycopg 3"),
        ("not a url", "database URL"),
    ],
)
def test_unusable_urls_are_refused_by_name_without_the_password(url: str, says: str) -> None:
    with pytest.raises(db.DatabaseUrlError, match=says) as caught:
        db.parse_url(url)
    assert "secret" not in str(caught.value)


def test_the_default_database_is_a_sqlite_file_under_xdg_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert db.default_url() == f"sqlite:///{tmp_path}/skycourier/ground.db"
    with Store.open() as opened:
        assert opened.drones() == []
    assert (tmp_path / "skycourier" / "ground.db").is_file()


def test_sqlite_is_durable_at_commit(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path}/g.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


# -- ingest -------------------------------------------------------------------------------


def test_a_record_delivered_again_is_stored_once_and_counted(store: Store) -> None:
    records = [sample("d1", seq, T0 + seq * 0.2) for seq in range(1, 11)]
    first = store.ingest(got(records[:6]))
    assert (first.stored, first.duplicates) == (6, 0)
    # at-least-once: the broker re-sends, the drone re-sends, and a batch repeats a record
    again = store.ingest(got([*records[4:], records[9]]))
    assert (again.stored, again.duplicates) == (4, 3)
    assert [p.seq for p in store.track("d1")] == list(range(1, 11))


def test_the_same_record_id_from_two_drones_is_two_records(store: Store) -> None:
    a = sample("d1", 1, T0)
    b = schema.Telemetry("d2", 1, a.id, a.t)
    assert store.ingest(got([a, b])).stored == 2


def test_a_drone_row_moves_forward_only(store: Store) -> None:
    store.ingest(got([sample("d1", 5, T0)], at=T0 + 10))
    store.ingest(got([sample("d1", 3, T0 - 1)], at=T0 + 5))  # late redelivery of older ones
    drone = store.drone("d1")
    assert drone is not None
    assert drone.last_seq == 5
    assert drone.last_seen_at == datetime.fromtimestamp(T0 + 10, timezone.utc)
    assert drone.first_seen_at == datetime.fromtimestamp(T0 + 10, timezone.utc)
    assert drone.latest is not None and drone.latest.seq == 5


def test_times_come_back_as_utc(store: Store) -> None:
    record = schema.Telemetry("d1", 1, schema.new_id(), "2026-11-18T21:00:00.250+02:00")
    store.ingest(got([record]))
    (point,) = store.track("d1")
    assert point.t == datetime(2026, 11, 18, 19, 0, 0, 250000, tzinfo=timezone.utc)
    assert point.t.tzinfo is timezone.utc


def test_records_the_database_cannot_keep_are_refused_and_the_rest_stored(store: Store) -> None:
    good = sample("d1", 1, T0)
    nul = event("d1", 2, T0, "released\x00")
    long_order = event("d1", 3, T0, "order-flying", "o" * 500)
    result = store.ingest(got([good, nul, long_order]))
    assert result.stored == 1
    assert [(r.record.seq, "NUL" in r.reason or "longer" in r.reason) for r in result.refused] == [
        (2, True),
        (3, True),
    ]
    assert store.events(drone_id="d1") == []


# -- liveness -----------------------------------------------------------------------------


def test_online_until_the_status_time_to_live_runs_out(store: Store) -> None:
    assert store.drones() == []
    store.ingest(got([sample("d1", 1, T0)]))
    assert store.drone("d1").liveness == "unknown"  # type: ignore[union-attr]
    store.ingest(got([status("d1", 1, T0, ttl=90.0)], at=T0 + 1))
    assert store.drone("d1", now=T0 + 89.9).online  # type: ignore[union-attr]
    assert store.drone("d1", now=T0 + 90.0).liveness == "expired"  # type: ignore[union-attr]
    store.clock.now = T0 + 200  # type: ignore[attr-defined]
    assert store.drones()[0].liveness == "expired"  # the store's clock by default
    store.ingest(got([status("d1", 2, T0 + 150)], at=T0 + 150))
    assert store.drones()[0].liveness == "online"
    store.ingest(got([status("d1", 3, T0 + 160, "offline", None)], at=T0 + 160))
    assert store.drones()[0].liveness == "offline"


def test_a_retained_status_said_long_ago_is_not_online(store: Store) -> None:
    # TTL counts from the earlier of the drone's "t" and arrival: a stale retained online
    # delivered now has already run out.
    store.ingest(got([status("d1", 1, T0 - 1000, ttl=90.0)], at=T0))
    assert store.drone("d1", now=T0).liveness == "expired"  # type: ignore[union-attr]


def test_an_older_status_arriving_late_does_not_override_a_newer_one(store: Store) -> None:
    store.ingest(got([status("d1", 9, T0 + 100, "offline", None)], at=T0 + 100))
    store.ingest(got([status("d1", 5, T0 + 50)], at=T0 + 101))
    drone = store.drone("d1", now=T0 + 102)
    assert drone is not None and drone.liveness == "offline"
    # both are history
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM statuses").scalar() == 2


def test_liveness_rules() -> None:
    now = datetime.fromtimestamp(T0, timezone.utc)
    assert liveness(None, None, now) == "unknown"
    assert liveness("offline", None, now) == "offline"
    assert liveness("online", None, now) == "online"  # version 1: no TTL, as the schema says
    assert liveness("online", now, now) == "expired"
    assert liveness("online", now + timedelta(seconds=1), now) == "online"


# -- orders and hand-overs ----------------------------------------------------------------

DIGEST = "ab" * 32


def test_an_order_moves_with_the_drones_events_and_never_back(store: Store) -> None:
    order = store.create_order("order-1", "d1", DIGEST, created_by="alice")
    assert (order.state, order.created_by, order.payload_digest) == ("created", "alice", DIGEST)
    store.ingest(
        got(
            [
                event("d1", 10, T0, "order-accepted", "order-1", accepted=True, digest=DIGEST),
                event("d1", 11, T0 + 1, "order-flying", "order-1", state="flying"),
            ]
        )
    )
    assert store.order("order-1").state == "flying"  # type: ignore[union-attr]
    store.ingest(got([event("d1", 40, T0 + 60, "order-done", "order-1", outcome="delivered")]))
    done = store.order("order-1")
    assert done is not None
    assert (done.state, done.outcome) == ("done", "delivered")
    # an older event delivered late (another instance, a redelivery) changes nothing
    store.ingest(got([event("d1", 12, T0 + 2, "order-flying", "order-1")]))
    assert store.order("order-1").state == "done"  # type: ignore[union-attr]
    kinds = [e.kind for e in store.events(order_id="order-1")]
    assert kinds == ["order-accepted", "order-flying", "order-flying", "order-done"]


def test_another_drone_cannot_move_an_order(store: Store) -> None:
    store.create_order("order-1", "d1", DIGEST)
    store.ingest(got([event("d2", 1, T0, "order-done", "order-1", outcome="delivered")]))
    assert store.order("order-1").state == "created"  # type: ignore[union-attr]


def test_an_order_the_store_never_saw_is_recorded_from_the_drones_report(store: Store) -> None:
    refused = event(
        "d1", 3, T0, "order-refused", "o-9", accepted=False, reason="bad-signature", digest=DIGEST
    )
    store.ingest(got([refused]))
    order = store.order("o-9")
    assert order is not None
    assert (order.drone_id, order.state, order.payload_digest) == ("d1", "refused", DIGEST)
    assert order.detail is not None and order.detail["reason"] == "bad-signature"
    assert [o.order_id for o in store.orders(drone_id="d1", state="refused")] == ["o-9"]


def test_create_order_refuses_a_taken_id_and_malformed_arguments(store: Store) -> None:
    store.create_order("order-1", "d1", DIGEST)
    with pytest.raises(OrderExists):
        store.create_order("order-1", "d2", DIGEST)
    with pytest.raises(StoreError, match="payload_digest"):
        store.create_order("order-2", "d1", "not-a-digest")
    with pytest.raises(StoreError, match="drone_id"):
        store.create_order("order-2", "d 1", DIGEST)
    with pytest.raises(StoreError, match="order_id"):
        store.create_order("x" * 201, "d1", DIGEST)
    assert store.drone("d1").liveness == "unknown"  # type: ignore[union-attr]


def test_handover_steps_are_recorded(store: Store) -> None:
    store.ingest(
        got(
            [
                event(
                    "d1",
                    1,
                    T0,
                    "recipient-verdict",
                    "o-1",
                    drop="drop-1",
                    outcome="refused",
                    why="no match",
                ),
                event("d1", 2, T0 + 1, "recipient-pin", "o-1", drop="drop-1", outcome="cleared"),
                event("d1", 3, T0 + 2, "released", "o-1", drop="drop-1"),
                event("d1", 4, T0 + 3, "recipient-verdict", "o-1"),  # no outcome: only an event
            ]
        )
    )
    steps = [(h.step, h.outcome, h.drop_id, h.why) for h in store.handovers(order_id="o-1")]
    assert steps == [
        ("recipient-verdict", "refused", "drop-1", "no match"),
        ("recipient-pin", "cleared", "drop-1", None),
        ("released", "released", "drop-1", None),
    ]


# -- tracks and events --------------------------------------------------------------------


def test_a_track_by_time_range_thinned_evenly(store: Store) -> None:
    store.ingest(got([sample("d1", seq, T0 + seq) for seq in range(1, 1001)]))
    store.ingest(got([sample("d2", 1, T0 + 5)]))
    whole = store.track("d1")
    assert [p.seq for p in whole] == list(range(1, 1001))
    window = store.track("d1", since=T0 + 100, until=T0 + 199)
    assert [p.seq for p in window] == list(range(100, 200))
    thin = store.track("d1", max_points=50)
    assert len(thin) <= 50 and len(thin) >= 45
    assert thin[0].seq == 1 and thin[-1].seq == 1000
    gaps = {b.seq - a.seq for a, b in itertools.pairwise(thin[:-1])}
    assert len(gaps) == 1  # evenly spaced
    with pytest.raises(StoreError):
        store.track("d1", max_points=1)


def test_events_by_drone_kind_and_limit(store: Store) -> None:
    kinds = ["enter", "gps-integrity-alarm"]
    records = [event("d1", s, T0 + s, kinds[s % 2 == 0]) for s in range(1, 21)]
    store.ingest(got([*records, event("d2", 1, T0, "enter")]))
    latest = store.events(drone_id="d1", limit=5)
    assert [e.seq for e in latest] == [16, 17, 18, 19, 20]
    alarms = store.events(drone_id="d1", kinds=["gps-integrity-alarm"])
    assert {e.kind for e in alarms} == {"gps-integrity-alarm"} and len(alarms) == 10
    assert len(store.events(since=T0 + 15)) == 6


# -- audit log ----------------------------------------------------------------------------


def test_the_audit_log_appends_and_pages_newest_first(store: Store) -> None:
    for i in range(5):
        store.clock.now = T0 + i  # type: ignore[attr-defined]
        store.append_audit("alice", "command-hold", "drone", "d1", {"n": i})
    store.append_audit("bob", "order-create", "order", "o-1")
    entries = store.audit(limit=3)
    assert [(e.actor, e.detail.get("n")) for e in entries] == [
        ("bob", None),
        ("alice", 4),
        ("alice", 3),
    ]
    older = store.audit(limit=10, before_id=entries[-1].id)
    assert [e.detail["n"] for e in older] == [2, 1, 0]
    assert len(store.audit(actor="alice", target_kind="drone", target_id="d1")) == 5
    assert entries[1].at == datetime.fromtimestamp(T0 + 4, timezone.utc)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"actor": "", "action": "x"}, "actor"),
        ({"actor": "a", "action": "x" * 65}, "action"),
        ({"actor": "a\x00b", "action": "x"}, "NUL"),
        ({"actor": "a", "action": "x", "detail": {"v": float("nan")}}, "JSON"),
        ({"actor": "a", "action": "x", "detail": {"v": object()}}, "JSON"),
    ],
)
def test_bad_audit_entries_are_refused_by_name(store: Store, kwargs: dict, says: str) -> None:
    with pytest.raises(StoreError, match=says):
        store.append_audit(**kwargs)
    assert store.audit() == []


# -- hostile text is data -----------------------------------------------------------------

HOSTILE = [
    "<script>alert(1)</script>",
    "'); DROP TABLE events; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM orders;--",
    "%s %(x)s ? :name $1",
    "<img src=x onerror=alert(1)>",
]


def test_html_and_sql_in_names_are_stored_as_data(store: Store) -> None:
    records: list[schema.Record] = []
    for seq, text in enumerate(HOSTILE, start=1):
        records.append(event("d1", seq, T0 + seq, text, text[:200], note=text))
        records.append(sample("d1", 100 + seq, T0 + seq, mode=text, phase=text,
                              detections={text: 1}))  # fmt: skip
    assert store.ingest(got(records)).stored == len(records)
    for text in HOSTILE:
        store.append_audit(text, "login-refused", "operator", text[:200], {"name": text})
    events = store.events(drone_id="d1")
    assert [(e.kind, e.mission_id, e.detail["note"]) for e in events] == [
        (t, t, t) for t in HOSTILE
    ]
    assert [p.mode for p in store.track("d1")] == HOSTILE
    assert [e.actor for e in store.audit()] == HOSTILE[::-1]
    with store.engine.connect() as conn:  # every table is still there and whole
        assert conn.execute(select(EventRecord.kind).order_by(EventRecord.seq)).scalars().all() == (
            HOSTILE
        )
        assert set(inspect(conn).get_table_names()) >= {"events", "orders", "drones"}


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63) + 1, 2**63 - 1) | st.floats(
        allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def test_any_decodable_record_is_stored_as_sent_or_refused_never_an_error(db_url: str) -> None:  # noqa: F811
    """Property: whatever strings and JSON a valid record carries, the store keeps it
    verbatim (read back equal) or refuses it with a reason; nothing raises."""
    store = Store.open(db_url, clock=Clock())
    seqs = iter(range(1, 10**9))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(kind=_text.filter(bool), mission=st.none() | _text, phase=st.none() | _text,
           detail=st.dictionaries(_text, _json, max_size=4), mode=_text)  # fmt: skip
    def check(kind: str, mission: str | None, phase: str | None, detail: dict, mode: str) -> None:
        seq = next(seqs)
        ev = schema.Event("d1", seq, schema.new_id(), iso(T0 + seq), kind, mission, phase, detail)
        tel = sample("d1", seq, T0 + seq, mode=mode, phase=phase)
        try:
            decoded = [schema.decode(schema.encode(r)) for r in (ev, tel)]
        except schema.SchemaError:
            return  # the drone would not send it
        result = store.ingest(got(decoded))
        assert result.stored + len(result.refused) == 2
        if not any(r.record is decoded[0] for r in result.refused):
            (back,) = [e for e in store.events(drone_id="d1", limit=10) if e.seq == seq]
            assert (back.kind, back.mission_id, back.phase) == (kind, mission, phase)
            assert back.detail == schema.decode(schema.encode(ev)).detail  # type: ignore[union-attr]

    try:
        check()
    finally:
        store.close()
