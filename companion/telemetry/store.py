"""The durable store-and-forward queue every outgoing record passes through.

A record is appended here *before* anyone tries to send it, and deleted only after the
transport confirms the broker has it (QoS 1 PUBACK): delivery is at-least-once across link
outages, process crashes and reboots. A record re-sent after a crash between PUBACK and
delete carries the same payload, hence the same id, so receivers de-duplicate.

Storage: one SQLite file in WAL mode (readers never block the writer, appends are sequential
writes). Durability per kind, stated:

- events commit with ``synchronous=FULL``: the WAL is fsynced at each commit, so an event
  survives power loss the moment `append` returns;
- telemetry commits with ``synchronous=NORMAL``: it survives a process crash, and a power cut
  may lose the last few samples not yet synced (the next FULL commit or checkpoint syncs them).
  Samples are superseded within a second and an fsync per sample would dominate the SD card's
  write budget at 5 Hz.

``seq`` is strictly increasing and never reused while the file lives, so it continues after a
restart and orders replay: the store assigns it (one more than the highest ever assigned), and
every transaction that deletes rows (ack, thinning, setting aside) also records the highest
seq in ``counters``, so an empty queue still knows where it was. (Files written before this
kept it in SQLite's AUTOINCREMENT ``sqlite_sequence``, which is still read; AUTOINCREMENT
itself is not used for new files: it costs a write to ``sqlite_sequence`` per append, a
third of an append's time; their ``(kind, seq)`` index is dropped too: thinning reads the
oldest rows in seq order anyway, and the index write cost a quarter of an append.) A single
record is appended with one autocommit INSERT (atomic on its own): the cheapest durable
append SQLite offers at a given ``synchronous``. Both claims, crash durability and seqs never
reused, are tested by killing a writer with SIGKILL at random points
(tests/test_durability_kill.py).

Bound and policy: the queue holds at most `max_rows` records and `max_bytes` bytes of topic +
payload (the file itself is larger by SQLite's page overhead). **Events are never dropped.**
When an append crosses the bound, telemetry is *thinned, oldest first*: a pass deletes every
second record among the oldest telemetry rows (keeping the oldest, dropping its successor, and
so on), freeing at least `thin_fraction` of the bound, so the start of an outage loses time
resolution before anything disappears and repeated passes thin old track progressively more
than new. Each dropped record counts in `thinned` (persisted). If only events remain and they
exceed the bound, they are kept anyway (logged, counted in `over_bound`): losing an abort
event to save disk is never the right trade. Thinning runs after an append has committed, so a
failure while thinning cannot undo the append: it is wrapped in a `StoreError`, logged and
counted (`thin_errors`, `last_error`), and the next append thins again.

Setting aside: a record the uplink can never send (larger than any message, corrupt) must not
block the queue for ever. `set_aside` moves it, in one transaction, from the queue to the
``set_aside`` table (with the reason), where the newest `SET_ASIDE_KEEP` are kept for
inspection; each one counts in `set_aside` (persisted) and is logged. This is the one way an
event leaves the queue unsent, and only because no transport could ever carry it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KINDS = ("telemetry", "event")

#: A payload, or a function that builds it once the record's seq is known (the seq is part of
#: the payload: a record's id and seq are fixed the moment it is queued).
Payload = bytes | Callable[[int], bytes]

#: Records set aside that stay in the file for inspection (the count covers all of them).
SET_ASIDE_KEEP = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL
);
DROP INDEX IF EXISTS outbox_kind_seq;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    wall_time REAL NOT NULL
);
"""
_SIZE = "length(CAST(topic AS BLOB)) + length(payload)"
_INSERT = "INSERT INTO outbox (seq, kind, topic, payload, retain) VALUES (?,?,?,?,?)"


class StoreError(Exception):
    """The queue file cannot be opened or written; the message names the file and the cause."""


@dataclass(frozen=True)
class Record:
    """One queued record, as it will be published."""

    seq: int
    kind: str
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class StoreStats:
    pending: int
    pending_events: int
    pending_bytes: int
    last_seq: int
    thinned: int
    over_bound: int
    set_aside: int = 0  # records moved out of the queue as unsendable (file lifetime)
    last_set_aside: str | None = None  # why the newest of them was
    thin_errors: int = 0  # thinning passes that failed (this process)
    last_error: str | None = None  # the latest thinning failure


def _size(topic: str, payload: bytes) -> int:
    return len(topic.encode()) + len(payload)


class Store:
    """A bounded, durable FIFO of records on SQLite. Thread-safe (one lock, one connection)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int = 500_000,
        max_bytes: int = 64 * 1024 * 1024,
        thin_fraction: float = 0.1,
    ) -> None:
        if max_rows < 2 or max_bytes < 1:
            raise ValueError(f"store bound too small: max_rows={max_rows}, max_bytes={max_bytes}")
        if not 0.0 < thin_fraction <= 0.5:
            raise ValueError(f"thin_fraction must be in (0, 0.5], got {thin_fraction}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.thin_fraction = thin_fraction
        self._lock = threading.Lock()
        self._thin_errors = 0
        self._last_error: str | None = None
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._sync = ""
            self._set_sync("FULL")
            self._load()
        except sqlite3.Error as exc:
            raise StoreError(f"telemetry queue {self.path}: cannot open: {exc}") from exc

    def _load(self) -> None:
        self._rows: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._bytes = 0
        query = f"SELECT kind, count(*), sum({_SIZE}) FROM outbox GROUP BY kind"
        for kind, rows, size in self._db.execute(query):
            self._rows[kind] = rows
            self._bytes += size or 0
        counters = dict(self._db.execute("SELECT name, value FROM counters"))
        highest = [
            counters.get("last_seq", 0),
            self._db.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0,
            self._db.execute("SELECT max(seq) FROM set_aside").fetchone()[0] or 0,
        ]
        legacy = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
        ).fetchone()
        if legacy:  # a file written with AUTOINCREMENT
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
            ).fetchone()
            highest.append(row[0] if row else 0)
        self._last_seq = max(highest)
        self._thinned = counters.get("thinned", 0)
        self._over_bound = counters.get("over_bound", 0)
        self._set_aside = counters.get("set_aside", 0)
        row = self._db.execute("SELECT reason FROM set_aside ORDER BY seq DESC LIMIT 1").fetchone()
        self._last_set_aside: str | None = row[0] if row else None

    def _set_sync(self, level: str) -> None:
        if level != self._sync:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    # -- writing -----------------------------------------------------------------------------

    def append(self, kind: str, topic: str, payload: Payload, retain: bool = False) -> int:
        """Queue one record durably (see the module doc for per-kind durability); its seq."""
        _check_item(kind, topic)
        with self._lock:
            seq = self._last_seq + 1
            data = _payload(kind, seq, payload)
            self._set_sync("FULL" if kind == "event" else "NORMAL")
            try:
                self._db.execute(_INSERT, (seq, kind, topic, data, int(retain)))
            except sqlite3.Error as exc:
                raise StoreError(f"telemetry queue {self.path}: cannot append: {exc}") from exc
            self._last_seq = seq
            self._bytes += _size(topic, data)
            self._rows[kind] += 1
            if self._over():
                self._bound()
            return seq

    def append_many(self, items: Iterable[tuple[str, str, Payload, bool]]) -> list[int]:
        """Queue records in one transaction, in order; their seqs. Thins telemetry if the
        bound is crossed. Nothing is queued if any item is invalid (ValueError names it)."""
        items = list(items)
        if not items:
            return []
        for kind, topic, _, _ in items:
            _check_item(kind, topic)
        with self._lock:
            seqs: list[int] = []
            rows: list[tuple[int, str, str, bytes, int]] = []
            added_bytes = 0
            added = dict.fromkeys(KINDS, 0)
            for kind, topic, payload, retain in items:
                seq = self._last_seq + 1 + len(seqs)
                data = _payload(kind, seq, payload)
                rows.append((seq, kind, topic, data, int(retain)))
                seqs.append(seq)
                added_bytes += _size(topic, data)
                added[kind] += 1
            self._set_sync("FULL" if added["event"] else "NORMAL")
            try:
                with self._transaction():
                    self._db.executemany(_INSERT, rows)
            except sqlite3.Error as exc:
                raise StoreError(f"telemetry queue {self.path}: cannot append: {exc}") from exc
            self._last_seq = seqs[-1]
            self._bytes += added_bytes
            for kind, n in added.items():
                self._rows[kind] += n
            if self._over():
                self._bound()
            return seqs

    def ack(self, seq: int) -> None:
        """The broker has record `seq`: forget it. Unknown or already-acked seqs are no-ops."""
        self._delete("seq = ?", seq)

    def ack_through(self, seq: int) -> None:
        """Forget every record up to and including `seq` (a batch confirmed in order)."""
        self._delete("seq <= ?", seq)

    def _delete(self, where: str, seq: int) -> None:
        with self._lock:
            self._set_sync("NORMAL")  # a lost ack only means a duplicate, which receivers drop
            try:
                with self._transaction():
                    gone = self._db.execute(
                        f"SELECT kind, count(*), sum({_SIZE}) FROM outbox WHERE {where}"
                        " GROUP BY kind",
                        (seq,),
                    ).fetchall()
                    self._db.execute(f"DELETE FROM outbox WHERE {where}", (seq,))
                    self._save_counters({})
            except sqlite3.Error as exc:
                raise StoreError(f"telemetry queue {self.path}: cannot ack {seq}: {exc}") from exc
            for kind, rows, size in gone:
                self._rows[kind] -= rows
                self._bytes -= size or 0

    def set_aside(self, seq: int, reason: str) -> bool:
        """Move record `seq`, which can never be sent, out of the queue (module doc); False if
        it is not queued (acked or set aside already). Durable (synchronous=FULL): it is a
        decision about data, taken once."""
        with self._lock:
            self._set_sync("FULL")
            try:
                with self._transaction():
                    row = self._db.execute(
                        "SELECT kind, topic, payload FROM outbox WHERE seq = ?", (seq,)
                    ).fetchone()
                    if row is None:
                        return False
                    kind, topic, payload = row
                    self._db.execute(
                        "INSERT OR REPLACE INTO set_aside VALUES (?, ?, ?, ?, ?, ?)",
                        (seq, kind, topic, payload, reason, time.time()),
                    )
                    self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                    self._db.execute(
                        "DELETE FROM set_aside WHERE seq NOT IN"
                        " (SELECT seq FROM set_aside ORDER BY seq DESC LIMIT ?)",
                        (SET_ASIDE_KEEP,),
                    )
                    self._save_counters({"set_aside": self._set_aside + 1})
            except sqlite3.Error as exc:
                raise StoreError(
                    f"telemetry queue {self.path}: cannot set record {seq} aside: {exc}"
                ) from exc
            self._rows[kind] -= 1
            self._bytes -= _size(topic, bytes(payload))
            self._set_aside += 1
            self._last_set_aside = reason
        log.error(
            "telemetry queue %s: record %d (%s on %s) set aside, never to be sent: %s",
            self.path,
            seq,
            kind,
            topic,
            reason,
        )
        return True

    def _save_counters(self, values: dict[str, int]) -> None:
        """Persist `values` and the highest seq, inside the caller's transaction (every
        transaction that deletes rows calls this: an emptied queue still knows its seq)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
            [("last_seq", self._last_seq), *values.items()],
        )

    # -- bound ---------------------------------------------------------------------------------

    def _over(self) -> bool:
        return sum(self._rows.values()) > self.max_rows or self._bytes > self.max_bytes

    def _bound(self) -> None:
        """Thin after an append that crossed the bound. The append has committed, so a failure
        here is wrapped, logged and counted, never raised: raising would tell the caller its
        durable record was not queued. The next append thins again. Caller holds the lock."""
        try:
            self._thin()
        except sqlite3.Error as exc:
            error = StoreError(
                f"telemetry queue {self.path}: appended, but cannot thin to the bound: {exc}"
            )
            self._thin_errors += 1
            self._last_error = str(error)
            log.error("%s (%d thinning failures so far)", error, self._thin_errors)

    def _thin(self) -> None:
        """Thinning passes until within bound (policy in the module doc). Each pass deletes
        and counts in one transaction; memory follows only committed passes."""
        target_rows = int(self.max_rows * (1 - self.thin_fraction))
        target_bytes = int(self.max_bytes * (1 - self.thin_fraction))
        dropped = 0
        while self._rows["telemetry"] and (
            sum(self._rows.values()) > target_rows or self._bytes > target_bytes
        ):
            total = sum(self._rows.values())
            need_rows = max(0, total - target_rows)
            need_bytes = max(0, self._bytes - target_bytes)
            mean_size = max(1, self._bytes // total)
            # Enough of the oldest telemetry that dropping every second one meets the target
            # (bytes estimated with the mean record size; a further pass makes up any shortfall).
            window = 2 * max(1, need_rows, -(-need_bytes // mean_size))
            with self._transaction():
                oldest = self._db.execute(
                    f"SELECT seq, {_SIZE} FROM outbox WHERE kind = 'telemetry' ORDER BY seq"
                    " LIMIT ?",
                    (window,),
                ).fetchall()
                victims = oldest[1::2] or oldest  # a lone telemetry row goes too
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s, _ in victims])
                self._save_counters({"thinned": self._thinned + len(victims)})
            self._rows["telemetry"] -= len(victims)
            self._bytes -= sum(size for _, size in victims)
            self._thinned += len(victims)
            dropped += len(victims)
        if self._over():
            with self._transaction():
                self._save_counters({"over_bound": self._over_bound + 1})
            self._over_bound += 1
            log.warning(
                "telemetry queue %s: %d events (%d bytes) exceed the bound of %d rows / %d bytes;"
                " kept, because events are never dropped",
                self.path,
                self._rows["event"],
                self._bytes,
                self.max_rows,
                self.max_bytes,
            )
        if dropped:
            log.warning(
                "telemetry queue %s at its bound: thinned %d oldest telemetry records (%d in all)",
                self.path,
                dropped,
                self._thinned,
            )

    # -- reading -------------------------------------------------------------------------------

    def peek(self, n: int = 1) -> list[Record]:
        """Up to `n` of the oldest records, oldest first, without removing them."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT seq, kind, topic, payload, retain FROM outbox ORDER BY seq LIMIT ?",
                    (n,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"telemetry queue {self.path}: cannot read: {exc}") from exc
        return [
            Record(seq, kind, topic, bytes(payload), bool(retain))
            for seq, kind, topic, payload, retain in rows
        ]

    def pending(self) -> int:
        """Records queued and not yet acknowledged."""
        with self._lock:
            return sum(self._rows.values())

    @property
    def last_seq(self) -> int:
        """The highest seq ever assigned (0 for a new file)."""
        with self._lock:
            return self._last_seq

    @property
    def thinned(self) -> int:
        """Telemetry records dropped by the bound policy over the file's life."""
        with self._lock:
            return self._thinned

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                pending=sum(self._rows.values()),
                pending_events=self._rows["event"],
                pending_bytes=self._bytes,
                last_seq=self._last_seq,
                thinned=self._thinned,
                over_bound=self._over_bound,
                set_aside=self._set_aside,
                last_set_aside=self._last_set_aside,
                thin_errors=self._thin_errors,
                last_error=self._last_error,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


def _check_item(kind: str, topic: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}, expected one of {KINDS}")
    if not topic:
        raise ValueError("a record needs a topic")


def _payload(kind: str, seq: int, payload: Payload) -> bytes:
    data = payload(seq) if callable(payload) else payload
    if not isinstance(data, bytes):
        raise ValueError(f"payload of {kind} seq {seq} is {type(data).__name__}, not bytes")
    return data


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error (the connection is in autocommit mode so
    that PRAGMA synchronous can change between transactions). A COMMIT that fails (disk full,
    I/O error) is rolled back too, so the connection is never left inside a transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self._rollback()
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
