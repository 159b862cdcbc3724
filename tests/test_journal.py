"""The mission journal: durable, WAL-mode, and it knows which missions never finished."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from companion.mission.journal import (
    FINISHED_EVENT,
    SCHEMA_VERSION,
    Journal,
    JournalEntry,
    JournalError,
)

PLAN = {"mission_id": "m1", "drop_lat": -35.36, "drop_lon": 149.17, "cruise_alt_m": 30.0}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


def test_records_read_back_in_order_with_both_clocks(db: Path) -> None:
    with Journal(db, clock=FakeClock()) as journal:
        journal.start_mission("m1", PLAN)
        first = journal.record("m1", "takeoff", "enter", {"target_alt_m": 30.0}, 12.5)
        second = journal.record("m1", "cruise", "enter")
        assert second > first
        assert journal.events("m1") == [
            JournalEntry(first, "m1", "takeoff", "enter", {"target_alt_m": 30.0}, 12.5, 1002.0),
            JournalEntry(second, "m1", "cruise", "enter", None, None, 1003.0),
        ]
        assert journal.plan("m1") == PLAN


def test_everything_survives_reopening(db: Path) -> None:
    journal = Journal(db)
    journal.start_mission("m1", PLAN)
    journal.record("m1", "cruise", "enter", {"drop": [-35.36, 149.17]}, 40.0)
    journal.close()
    journal.close()  # idempotent
    with Journal(db) as reopened:
        assert [(e.phase, e.event, e.detail) for e in reopened.events("m1")] == [
            ("cruise", "enter", {"drop": [-35.36, 149.17]})
        ]
        assert reopened.unfinished() == ["m1"]
        assert reopened.plan("m1") == PLAN


def test_a_committed_record_survives_the_process_dying(db: Path) -> None:
    """The writer is killed without closing (os._exit): what record() returned is on disk."""
    script = (
        "import os, sys\n"
        "from companion.mission.journal import Journal\n"
        "j = Journal(sys.argv[1])\n"
        "j.start_mission('m1', {})\n"
        "j.record('m1', 'descend', 'enter', None, 77.0)\n"
        "os._exit(0)\n"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script, str(db)], check=True, cwd=root, timeout=60)
    with Journal(db) as journal:
        assert [(e.phase, e.vehicle_time_s) for e in journal.events("m1")] == [("descend", 77.0)]
        assert journal.unfinished() == ["m1"]


def test_unfinished_lists_only_missions_without_a_terminal_event(db: Path) -> None:
    with Journal(db, clock=FakeClock()) as journal:
        for mid in ("a", "b", "c"):
            journal.start_mission(mid, {"id": mid})
            journal.record(mid, "takeoff", "enter")
        journal.finish("b", "delivered", 200.0)
        assert journal.unfinished() == ["a", "c"]
        assert journal.outcome("b") == "delivered"
        assert journal.outcome("a") is None
        last = journal.events("b")[-1]
        assert (last.phase, last.event, last.detail, last.vehicle_time_s) == (
            "takeoff",
            FINISHED_EVENT,
            {"outcome": "delivered"},
            200.0,
        )


def test_a_finished_mission_takes_no_more_records(db: Path) -> None:
    with Journal(db) as journal:
        journal.start_mission("m1", PLAN)
        journal.finish("m1", "battery low: 20% < 25%")
        with pytest.raises(JournalError, match=r"'m1' already finished \(battery low"):
            journal.record("m1", "land", "enter")
        with pytest.raises(JournalError, match="already finished"):
            journal.finish("m1", "delivered")
        assert journal.outcome("m1") == "battery low: 20% < 25%"


def test_wal_mode_and_schema_version(db: Path) -> None:
    with Journal(db) as journal:
        assert journal.journal_mode == "wal"
        journal.start_mission("m1", PLAN)
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        raw.close()


def test_unknown_and_duplicate_missions_are_errors(db: Path) -> None:
    with Journal(db) as journal:
        with pytest.raises(JournalError, match="no mission 'ghost' was started"):
            journal.record("ghost", "cruise", "enter")
        journal.start_mission("m1", PLAN)
        with pytest.raises(JournalError, match="'m1' already exists"):
            journal.start_mission("m1", PLAN)
        with pytest.raises(JournalError, match="no mission 'ghost'"):
            journal.plan("ghost")


def test_a_corrupt_file_is_named(db: Path) -> None:
    db.write_bytes(b"this is not an SQLite database, it is a shopping list" * 100)
    with pytest.raises(JournalError, match=f"journal {db}: cannot open: file is not a database"):
        Journal(db)


def test_an_unwritable_location_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be")
    path = blocker / "journal.db"
    with pytest.raises(JournalError, match=f"journal {path}: cannot open"):
        Journal(path)


def test_a_newer_schema_is_refused(db: Path) -> None:
    Journal(db).close()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(JournalError, match="newer SkyCourier"):
        Journal(db)


def test_details_that_json_cannot_encode_are_stored_as_text(db: Path) -> None:
    with Journal(db) as journal:
        journal.start_mission("m1", PLAN)
        journal.record("m1", "release", "released", {"log": Path("/var/log/x")})
        assert journal.events("m1")[0].detail == {"log": "/var/log/x"}


def test_concurrent_writers_from_several_threads(db: Path) -> None:
    with Journal(db) as journal:
        journal.start_mission("m1", PLAN)

        def writer(k: int) -> None:
            for i in range(25):
                journal.record("m1", "cruise", f"tick-{k}-{i}")

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        events = journal.events("m1")
        assert len(events) == 100
        assert len({e.seq for e in events}) == 100
        assert {e.event for e in events} == {f"tick-{k}-{i}" for k in range(4) for i in range(25)}


def test_synchronous_mode_is_checked(db: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        Journal(db, synchronous="OFF")  # type: ignore[arg-type]
