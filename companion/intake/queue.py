"""The durable queue of accepted orders: what the daemon has promised to fly.

An order is written here (SQLite, WAL, `synchronous=FULL`) before its acceptance is
acknowledged, so an acknowledged order survives a crash or a power cut. Each order moves
`queued` -> `flying` -> `done` (with the mission's outcome), or `interrupted` when the daemon
finds it `flying` at start-up: the process died with the order in the air or on the ground,
the mission journal's recovery has made the drone safe, and the operator must be told
(`interrupted` is reported, never flown again by itself: the parcel, the battery and the
drop's window have all changed since).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

QUEUED, FLYING, DONE, INTERRUPTED = "queued", "flying", "done", "interrupted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id    TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    blob        BLOB NOT NULL,
    source      TEXT NOT NULL,
    state       TEXT NOT NULL,
    outcome     TEXT,
    received_at REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_state ON orders (state, received_at);
"""


class QueueError(Exception):
    """The queue cannot be opened or written; the message names the file and the cause."""


class DuplicateOrder(QueueError):
    """An order id already in the queue (in any state): an order is flown once."""


@dataclass(frozen=True)
class QueuedOrder:
    """One row: the order's id, its digest, the signed bytes as received, where it came
    from, its state and outcome."""

    order_id: str
    digest: str
    blob: bytes
    source: str
    state: str
    outcome: str | None
    received_at: float


class OrderQueue:
    """Accepted orders in arrival order; thread-safe (one connection, one lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise QueueError(f"{self.path}: cannot open the order queue: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> OrderQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, order_id: str, digest: str, blob: bytes, source: str) -> None:
        """Queue an accepted order, durably; DuplicateOrder for an id seen before."""
        now = time.time()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO orders VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                    (order_id, digest, blob, source, QUEUED, now, now),
                )
            except sqlite3.IntegrityError:
                state = self._db.execute(
                    "SELECT state FROM orders WHERE order_id = ?", (order_id,)
                ).fetchone()
                raise DuplicateOrder(
                    f"order {order_id!r} is already in the queue ({state[0] if state else '?'})"
                ) from None
            except sqlite3.Error as exc:
                raise QueueError(f"{self.path}: cannot queue order {order_id!r}: {exc}") from exc

    def next_queued(self) -> QueuedOrder | None:
        """The oldest order waiting to be flown, or None."""
        return self._one(
            "SELECT * FROM orders WHERE state = ? ORDER BY received_at, rowid LIMIT 1", (QUEUED,)
        )

    def get(self, order_id: str) -> QueuedOrder | None:
        return self._one("SELECT * FROM orders WHERE order_id = ?", (order_id,))

    def mark(self, order_id: str, state: str, outcome: str | None = None) -> None:
        """Move an order to `state` (with the mission's `outcome` when it is done)."""
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE orders SET state = ?, outcome = ?, updated_at = ? WHERE order_id = ?",
                    (state, outcome, time.time(), order_id),
                )
            except sqlite3.Error as exc:
                raise QueueError(f"{self.path}: cannot mark order {order_id!r}: {exc}") from exc

    def interrupt_flying(self) -> list[str]:
        """At start-up: every order left `flying` becomes `interrupted`; their ids."""
        with self._lock:
            rows = self._db.execute(
                "SELECT order_id FROM orders WHERE state = ? ORDER BY received_at", (FLYING,)
            ).fetchall()
            for (order_id,) in rows:
                self._db.execute(
                    "UPDATE orders SET state = ?, outcome = ?, updated_at = ? WHERE order_id = ?",
                    (INTERRUPTED, "the daemon stopped while it was flying", time.time(),
                     order_id),
                )  # fmt: skip
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        """Orders per state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM orders GROUP BY state")
            return {state: n for state, n in rows}

    def _one(self, sql: str, args: tuple) -> QueuedOrder | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        if row is None:
            return None
        order_id, digest, blob, source, state, outcome, received_at, _ = row
        return QueuedOrder(order_id, digest, bytes(blob), source, state, outcome, received_at)
