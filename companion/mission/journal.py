"""The durable journal of delivery missions (SQLite, WAL).

Each transition of a delivery is written here *before* it is acted on, so that after a reboot
mid-flight the daemon can find the missions that never reached a terminal event
(`Journal.unfinished`) and resume them or land, instead of forgetting it was flying.

Durability choices:

- WAL mode: a reader (a status query, the telemetry uplink) never blocks the writer, and a
  crash mid-write leaves the last committed state intact.
- ``synchronous=FULL`` by default: each committed record is fsynced, so it survives a power
  cut, which on a drone is the likely way for the companion to stop mid-flight. A delivery
  writes a dozen records, so the cost is a dozen fsyncs per flight. ``NORMAL`` (survives a
  process crash, may lose the last records on power loss) is available for bulk use.
- One connection shared behind a lock: the journal is written by the mission thread and read
  by others; SQLite connections must not be used concurrently.

Every failure (unwritable directory, corrupt or foreign file, newer schema, unknown mission)
raises `JournalError` naming the database path.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS missions (
    mission_id    TEXT PRIMARY KEY,
    plan          TEXT NOT NULL,
    started_wall  REAL NOT NULL,
    finished_wall REAL,
    outcome       TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    mission_id     TEXT NOT NULL REFERENCES missions(mission_id),
    phase          TEXT NOT NULL,
    event          TEXT NOT NULL,
    detail         TEXT,
    vehicle_time_s REAL,
    wall_time      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_mission ON events (mission_id, seq);
"""

#: The event `finish` records; a mission with it (and an outcome) is terminal.
FINISHED_EVENT = "finished"


class JournalError(Exception):
    """The journal cannot be opened, read or written; the message names the database."""


@dataclass(frozen=True)
class JournalEntry:
    """One recorded transition. `vehicle_time_s` is the autopilot's boot clock, if known."""

    seq: int
    mission_id: str
    phase: str
    event: str
    detail: dict[str, Any] | None
    vehicle_time_s: float | None
    wall_time: float


class Journal:
    """A mission journal in the SQLite file `path` (created with its schema if absent).

    Thread-safe; `clock` (wall time) is injectable for tests.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: cannot open: {exc}") from exc
        try:
            self._open(synchronous)
        except sqlite3.Error as exc:
            self._db.close()
            raise JournalError(f"journal {self.path}: cannot open: {exc}") from exc
        except JournalError:
            self._db.close()
            raise

    def _open(self, synchronous: str) -> None:
        db = self._db
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise JournalError(f"journal {self.path}: database is corrupt: {check}")
        #: "wal" for a file; SQLite keeps "memory" for ":memory:".
        self.journal_mode: str = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self.path}: written by a newer SkyCourier (schema {row[0]}, "
                    f"this one reads up to {SCHEMA_VERSION})"
                )
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One locked write transaction; any SQLite failure becomes a `JournalError`."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: cannot {what}: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise JournalError(f"journal {self.path}: cannot {what}: {exc}") from exc
                raise

    def _query(self, sql: str, args: tuple[object, ...], what: str) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: cannot {what}: {exc}") from exc

    def start_mission(self, mission_id: str, plan: dict[str, Any]) -> None:
        """Record that `mission_id` starts flying `plan` (JSON-serialisable; kept for resume)."""
        with self._transaction(f"start mission {mission_id!r}") as db:
            if db.execute("SELECT 1 FROM missions WHERE mission_id = ?", (mission_id,)).fetchone():
                raise JournalError(f"journal {self.path}: mission {mission_id!r} already exists")
            db.execute(
                "INSERT INTO missions (mission_id, plan, started_wall) VALUES (?, ?, ?)",
                (mission_id, _dumps(plan), self._clock()),
            )

    def record(
        self,
        mission_id: str,
        phase: str,
        event: str,
        detail: dict[str, Any] | None = None,
        vehicle_time_s: float | None = None,
    ) -> int:
        """Append one transition of a started mission; returns its sequence number."""
        with self._transaction(f"record {event!r} for mission {mission_id!r}") as db:
            return self._insert(db, mission_id, phase, event, detail, vehicle_time_s)

    def _insert(
        self,
        db: sqlite3.Connection,
        mission_id: str,
        phase: str,
        event: str,
        detail: dict[str, Any] | None,
        vehicle_time_s: float | None,
    ) -> int:
        row = db.execute(
            "SELECT outcome FROM missions WHERE mission_id = ?", (mission_id,)
        ).fetchone()
        if row is None:
            raise JournalError(f"journal {self.path}: no mission {mission_id!r} was started")
        if row[0] is not None:
            raise JournalError(
                f"journal {self.path}: mission {mission_id!r} already finished ({row[0]})"
            )
        cursor = db.execute(
            "INSERT INTO events (mission_id, phase, event, detail, vehicle_time_s, wall_time)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                mission_id,
                phase,
                event,
                None if detail is None else _dumps(detail),
                vehicle_time_s,
                self._clock(),
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish(self, mission_id: str, outcome: str, vehicle_time_s: float | None = None) -> int:
        """Mark the mission terminal with `outcome` ("delivered" or the abort reason).

        Records a `FINISHED_EVENT` in the mission's last phase, in the same transaction.
        """
        with self._transaction(f"finish mission {mission_id!r}") as db:
            last = db.execute(
                "SELECT phase FROM events WHERE mission_id = ? ORDER BY seq DESC LIMIT 1",
                (mission_id,),
            ).fetchone()
            seq = self._insert(
                db,
                mission_id,
                last[0] if last else "",
                FINISHED_EVENT,
                {"outcome": outcome},
                vehicle_time_s,
            )
            db.execute(
                "UPDATE missions SET outcome = ?, finished_wall = ? WHERE mission_id = ?",
                (outcome, self._clock(), mission_id),
            )
            return seq

    def events(self, mission_id: str) -> list[JournalEntry]:
        """Every transition of the mission, in the order recorded."""
        rows = self._query(
            "SELECT seq, mission_id, phase, event, detail, vehicle_time_s, wall_time"
            " FROM events WHERE mission_id = ? ORDER BY seq",
            (mission_id,),
            f"read mission {mission_id!r}",
        )
        return [
            JournalEntry(seq, mid, phase, event, None if d is None else json.loads(d), vt, wt)
            for seq, mid, phase, event, d, vt, wt in rows
        ]

    def plan(self, mission_id: str) -> dict[str, Any]:
        """The plan the mission was started with (to resume it after a reboot)."""
        rows = self._query(
            "SELECT plan FROM missions WHERE mission_id = ?", (mission_id,), "read a plan"
        )
        if not rows:
            raise JournalError(f"journal {self.path}: no mission {mission_id!r}")
        return json.loads(rows[0][0])

    def outcome(self, mission_id: str) -> str | None:
        """How the mission ended, or None while it is unfinished."""
        rows = self._query(
            "SELECT outcome FROM missions WHERE mission_id = ?", (mission_id,), "read an outcome"
        )
        if not rows:
            raise JournalError(f"journal {self.path}: no mission {mission_id!r}")
        return rows[0][0]

    def unfinished(self) -> list[str]:
        """Missions started but never finished, oldest first: at boot, resume or land them."""
        rows = self._query(
            "SELECT mission_id FROM missions WHERE outcome IS NULL ORDER BY started_wall, rowid",
            (),
            "list unfinished missions",
        )
        return [r[0] for r in rows]

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dumps(value: object) -> str:
    # default=str: a Path or Enum in a detail must not crash a mission mid-flight.
    return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
