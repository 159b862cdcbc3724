"""The durable store-and-forward queue: order, durability across reopen, seq that never goes
back, and the bound policy (events never dropped; telemetry thinned oldest first, only when
the bound is hit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.telemetry.store import Store, StoreError

TEL = "skycourier/v1/d1/telemetry"
EVT = "skycourier/v1/d1/events"


def _kind_topic(kind: str) -> str:
    return TEL if kind == "telemetry" else EVT


def test_fifo_order_peek_and_ack(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    seqs = [store.append("telemetry", TEL, f"t{i}".encode()) for i in range(5)]
    seqs.append(store.append("event", EVT, b"e", retain=False))
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert [r.payload for r in store.peek(3)] == [b"t0", b"t1", b"t2"]
    assert store.peek(3) == store.peek(3)  # peek does not consume
    store.ack(2)
    assert [r.seq for r in store.peek(10)] == [1, 3, 4, 5, 6]
    store.ack(2)  # a second ack of the same record is harmless
    store.ack_through(4)
    assert [(r.seq, r.kind, r.topic) for r in store.peek(10)] == [
        (5, "telemetry", TEL),
        (6, "event", EVT),
    ]
    assert store.pending() == 2


def test_payload_builder_sees_its_seq(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    store.append("event", EVT, b"first")
    seq = store.append("event", EVT, lambda s: f"I am {s}".encode(), retain=True)
    record = store.peek(5)[-1]
    assert (record.seq, record.payload, record.retain) == (seq, b"I am 2", True)


def test_survives_reopen_and_seq_continues(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = Store(path)
    store.append_many([("telemetry", TEL, b"a", False), ("event", EVT, b"b", True)])
    store.append("telemetry", TEL, b"c")
    store.ack(1)
    store.close()

    again = Store(path)
    assert [(r.seq, r.payload, r.retain) for r in again.peek(10)] == [
        (2, b"b", True),
        (3, b"c", False),
    ]
    assert again.stats().pending_events == 1
    again.ack_through(3)
    again.close()

    third = Store(path)  # everything acked: seq still never goes back
    assert third.pending() == 0
    assert third.append("telemetry", TEL, b"d") == 4


def test_invalid_records_are_refused_whole(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    with pytest.raises(ValueError, match="unknown record kind 'photo'"):
        store.append_many([("event", EVT, b"ok", False), ("photo", TEL, b"x", False)])
    with pytest.raises(ValueError, match="needs a topic"):
        store.append("event", "", b"x")
    with pytest.raises(ValueError, match="payload of event seq 1 is str, not bytes"):
        store.append("event", EVT, lambda s: "text")  # type: ignore[arg-type,return-value]
    assert store.pending() == 0
    assert store.append("event", EVT, b"ok") == 1


def test_unopenable_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"telemetry queue .*junk\.db: cannot open"):
        Store(tmp_path / "junk.db")


def test_no_thinning_below_the_bound(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db", max_rows=100)
    store.append_many([("telemetry", TEL, b"x", False)] * 100)
    assert store.pending() == 100
    assert store.thinned == 0


def test_bound_thins_oldest_telemetry_and_keeps_every_event(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db", max_rows=100, thin_fraction=0.1)
    kinds = ["event" if i % 10 == 0 else "telemetry" for i in range(300)]
    for i, kind in enumerate(kinds):
        store.append(kind, _kind_topic(kind), str(i).encode())
    records = store.peek(1000)
    stats = store.stats()
    assert len(records) <= 100
    assert stats.pending_events == 30  # every event, none dropped
    assert [r.payload for r in records if r.kind == "event"] == [
        str(i).encode() for i, k in enumerate(kinds) if k == "event"
    ]
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs)
    assert stats.thinned == 270 - (len(records) - 30)
    # Oldest first: the newest telemetry is all still there, the oldest was thinned.
    kept = {int(r.payload) for r in records if r.kind == "telemetry"}
    newest = [i for i, k in enumerate(kinds) if k == "telemetry"][-20:]
    assert set(newest) <= kept
    assert 1 in kept  # the first sample of the outage is kept: the pass drops every second one
    assert 2 not in kept


def test_byte_bound(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db", max_bytes=10_000)
    for _ in range(100):
        store.append("telemetry", TEL, b"x" * 200)
    assert store.stats().pending_bytes <= 10_000
    assert store.thinned > 0


def test_events_beyond_the_bound_are_kept_and_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db", max_rows=10)
    store.append("telemetry", TEL, b"t")
    for i in range(15):
        store.append("event", EVT, str(i).encode())
    stats = store.stats()
    assert stats.pending_events == 15 and stats.pending == 15
    assert stats.thinned == 1 and stats.over_bound > 0
    store.close()
    assert Store(tmp_path / "q.db", max_rows=10).stats().thinned == 1  # counter persists


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(
                st.just("append"), st.sampled_from(["telemetry", "event"]), st.integers(1, 5)
            ),
            st.tuples(st.just("ack"), st.just(""), st.integers(1, 8)),
        ),
        max_size=60,
    )
)
def test_policy_invariants(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    """Whatever the mix: events all survive until acked, order is kept, the bound holds
    unless events alone exceed it, and every telemetry record is pending, acked or thinned."""
    store = Store(tmp_path_factory.mktemp("q") / "q.db", max_rows=12)
    events: list[int] = []
    appended_tel = acked_tel = 0
    for op, kind, n in ops:
        if op == "append":
            seqs = store.append_many([(kind, _kind_topic(kind), b"p", False)] * n)
            if kind == "event":
                events += seqs
            else:
                appended_tel += n
        else:
            head = store.peek(n)
            if head:
                acked_tel += sum(r.kind == "telemetry" for r in head)
                events = [s for s in events if s > head[-1].seq]
                store.ack_through(head[-1].seq)
        records = store.peek(1000)
        assert [r.seq for r in records if r.kind == "event"] == events
        assert [r.seq for r in records] == sorted(r.seq for r in records)
        assert len(records) <= max(12, len(events))
        pending_tel = sum(r.kind == "telemetry" for r in records)
        assert pending_tel + acked_tel + store.thinned == appended_tel


def test_batches_are_fast_enough_for_replay(tmp_path: Path) -> None:
    """Tens of thousands of records per second in batches (the bench measures the rate; this
    only checks that batch append/peek/ack_through work at that scale)."""
    store = Store(tmp_path / "q.db")
    payload = b"x" * 300
    seqs = store.append_many([("telemetry", TEL, payload, False)] * 20_000)
    assert seqs[0] == 1 and seqs[-1] == 20_000
    replayed = 0
    while batch := store.peek(1000):
        replayed += len(batch)
        store.ack_through(batch[-1].seq)
    assert replayed == 20_000 and store.pending() == 0
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_seq_survives_an_emptied_queue_without_autoincrement(tmp_path: Path) -> None:
    """The seq high-water mark is kept by every deleting transaction: ack, thinning and
    setting aside each leave an empty queue that still knows where it was."""
    path = tmp_path / "q.db"
    for delete in ("ack", "thin", "set_aside"):
        store = Store(path, max_rows=2)
        first = store.append("telemetry", TEL, b"a")
        if delete == "ack":
            store.ack_through(first)
        elif delete == "thin":
            store.append("telemetry", TEL, b"b")
            store.append("telemetry", TEL, b"c")  # over the bound: the oldest thinned
            store.ack_through(store.last_seq)
        else:
            assert store.set_aside(first, "test")
        assert store.pending() == 0
        last = store.last_seq
        store.close()
        assert Store(path).append("telemetry", TEL, b"next") == last + 1, delete
        Store(path).ack_through(last + 1)


def test_a_file_written_with_autoincrement_keeps_its_seq(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
            topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL);
        CREATE INDEX outbox_kind_seq ON outbox (kind, seq);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO outbox (kind, topic, payload, retain) VALUES ('event', 'e', x'01', 0);
        INSERT INTO outbox (kind, topic, payload, retain) VALUES ('event', 'e', x'02', 0);
        DELETE FROM outbox;
        """
    )
    db.commit()
    db.close()
    store = Store(path)
    assert store.append("event", EVT, b"3") == 3
    indexes = sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='index'")
    assert "outbox_kind_seq" not in [name for (name,) in indexes]


def test_set_aside_moves_a_record_out_and_keeps_the_newest_for_inspection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("companion.telemetry.store.SET_ASIDE_KEEP", 3)
    path = tmp_path / "q.db"
    store = Store(path)
    seqs = [store.append("telemetry", TEL, f"p{i}".encode()) for i in range(6)]
    for seq in seqs[:5]:
        assert store.set_aside(seq, f"reason {seq}")
    assert not store.set_aside(seqs[0], "again")  # no longer queued: a no-op
    assert [r.seq for r in store.peek(10)] == [6]
    stats = store.stats()
    assert (stats.pending, stats.pending_bytes, stats.set_aside) == (1, len(TEL) + 2, 5)
    assert stats.last_set_aside == "reason 5"
    store.close()
    rows = sqlite3.connect(path).execute("SELECT seq, payload, reason FROM set_aside").fetchall()
    assert rows == [(3, b"p2", "reason 3"), (4, b"p3", "reason 4"), (5, b"p4", "reason 5")]
    again = Store(path).stats()
    assert (again.set_aside, again.last_set_aside) == (5, "reason 5")  # persisted


def test_a_thinning_failure_is_wrapped_and_the_append_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses deletes (a trigger standing in for a disk that fails mid-way):
    the append that crossed the bound has committed, so it returns its seq; the failure is
    a StoreError in the log and the stats, and the next append thins again."""
    path = tmp_path / "q.db"
    store = Store(path, max_rows=4)
    blocker = sqlite3.connect(path)
    blocker.execute(
        "CREATE TRIGGER no_delete BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'disk"
        " says no'); END"
    )
    blocker.commit()
    seqs = [store.append("telemetry", TEL, b"x") for _ in range(6)]
    assert seqs == [1, 2, 3, 4, 5, 6]
    stats = store.stats()
    assert stats.pending == 6 and stats.thinned == 0 and stats.thin_errors == 2
    assert "appended, but cannot thin to the bound: disk says no" in (stats.last_error or "")
    assert "cannot thin to the bound" in caplog.text
    blocker.execute("DROP TRIGGER no_delete")
    blocker.commit()
    store.append("telemetry", TEL, b"x")
    assert store.pending() <= 4 and store.thinned > 0
    assert [r.seq for r in store.peek(10)] == sorted(r.seq for r in store.peek(10))
