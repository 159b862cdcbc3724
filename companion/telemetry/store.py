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

``seq`` is SQLite's AUTOINCREMENT key: strictly increasing, never reused while the file lives
(acked rows are deleted but ``sqlite_sequence`` remembers the highest), so it continues after
a restart and orders replay.

Bound and policy: the queue holds at most `max_rows` records and `max_bytes` bytes of topic +
payload (the file itself is larger by SQLite's page overhead). **Events are never dropped.**
When an append crosses the bound, telemetry is *thinned, oldest first*: a pass deletes every
second record among the oldest telemetry rows (keeping the oldest, dropping its successor, and
so on), freeing at least `thin_fraction` of the bound, so the start of an outage loses time
resolution before anything disappears and repeated passes thin old track progressively more
than new. Each dropped record counts in `thinned` (persisted). If only events remain and they
exceed the bound, they are kept anyway (logged, counted in `over_bound`): losing an abort
event to save disk is never the right trade.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KINDS = ("telemetry", "event")

#: A payload, or a function that builds it once the record's seq is known (the seq is part of
#: the payload: a record's id and seq are fixed the moment it is queued).
Payload = bytes | Callable[[int], bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


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
        query = (
            "SELECT kind, count(*), sum(length(CAST(topic AS BLOB)) + length(payload))"
            " FROM outbox GROUP BY kind"
        )
        for kind, rows, size in self._db.execute(query):
            self._rows[kind] = rows
            self._bytes += size or 0
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        self._last_seq = row[0] if row else 0
        counters = dict(self._db.execute("SELECT name, value FROM counters"))
        self._thinned = counters.get("thinned", 0)
        self._over_bound = counters.get("over_bound", 0)

    def _set_sync(self, level: str) -> None:
        if level != self._sync:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    # -- writing -----------------------------------------------------------------------------

    def append(self, kind: str, topic: str, payload: Payload, retain: bool = False) -> int:
        """Queue one record durably (see the module doc for per-kind durability); its seq."""
        return self.append_many([(kind, topic, payload, retain)])[-1]

    def append_many(self, items: Iterable[tuple[str, str, Payload, bool]]) -> list[int]:
        """Queue records in one transaction, in order; their seqs. Thins telemetry if the
        bound is crossed. Nothing is queued if any item is invalid (ValueError names it)."""
        items = list(items)
        if not items:
            return []
        for kind, topic, _, _ in items:
            if kind not in KINDS:
                raise ValueError(f"unknown record kind {kind!r}, expected one of {KINDS}")
            if not topic:
                raise ValueError("a record needs a topic")
        with self._lock:
            seqs: list[int] = []
            rows: list[tuple[int, str, str, bytes, int]] = []
            added_bytes = 0
            added = dict.fromkeys(KINDS, 0)
            for kind, topic, payload, retain in items:
                seq = self._last_seq + 1 + len(seqs)
                data = payload(seq) if callable(payload) else payload
                if not isinstance(data, bytes):
                    raise ValueError(
                        f"payload of {kind} seq {seq} is {type(data).__name__}, not bytes"
                    )
                rows.append((seq, kind, topic, data, int(retain)))
                seqs.append(seq)
                added_bytes += _size(topic, data)
                added[kind] += 1
            self._set_sync("FULL" if added["event"] else "NORMAL")
            try:
                with self._transaction():
                    self._db.executemany(
                        "INSERT INTO outbox (seq, kind, topic, payload, retain) VALUES (?,?,?,?,?)",
                        rows,
                    )
            except sqlite3.Error as exc:
                raise StoreError(f"telemetry queue {self.path}: cannot append: {exc}") from exc
            self._last_seq = seqs[-1]
            self._bytes += added_bytes
            for kind, n in added.items():
                self._rows[kind] += n
            if self._over():
                self._thin()
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
                        "SELECT kind, count(*), sum(length(CAST(topic AS BLOB)) + length(payload))"
                        f" FROM outbox WHERE {where} GROUP BY kind",
                        (seq,),
                    ).fetchall()
                    self._db.execute(f"DELETE FROM outbox WHERE {where}", (seq,))
            except sqlite3.Error as exc:
                raise StoreError(f"telemetry queue {self.path}: cannot ack {seq}: {exc}") from exc
            for kind, rows, size in gone:
                self._rows[kind] -= rows
                self._bytes -= size or 0

    # -- bound ---------------------------------------------------------------------------------

    def _over(self) -> bool:
        return sum(self._rows.values()) > self.max_rows or self._bytes > self.max_bytes

    def _thin(self) -> None:
        """Thinning passes until within bound (policy in the module doc). Caller holds the lock."""
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
            oldest = self._db.execute(
                "SELECT seq, length(CAST(topic AS BLOB)) + length(payload) FROM outbox"
                " WHERE kind = 'telemetry' ORDER BY seq LIMIT ?",
                (window,),
            ).fetchall()
            victims = oldest[1::2] or oldest  # a lone telemetry row goes too
            with self._transaction():
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s, _ in victims])
            self._rows["telemetry"] -= len(victims)
            self._bytes -= sum(size for _, size in victims)
            dropped += len(victims)
        counters = {"thinned": self._thinned + dropped}
        if self._over():
            self._over_bound += 1
            counters["over_bound"] = self._over_bound
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
                self._thinned + dropped,
            )
        self._thinned += dropped
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", counters.items()
            )

    # -- reading -------------------------------------------------------------------------------

    def peek(self, n: int = 1) -> list[Record]:
        """Up to `n` of the oldest records, oldest first, without removing them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, topic, payload, retain FROM outbox ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
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
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error (the connection is in autocommit mode so
    that PRAGMA synchronous can change between transactions)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
