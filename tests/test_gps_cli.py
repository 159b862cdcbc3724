"""`skycourier gps replay` on a recorded receiver log, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from companion.cli import main

GPS_LOGS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gps"


def test_replay_prints_one_json_object_per_epoch() -> None:
    log = GPS_LOGS / "ublox-lea-5h.log"
    if not log.exists():
        pytest.skip(f"{log} is absent: it comes with the project's shared reference folder")
    done = subprocess.run(
        [sys.executable, "-m", "companion.cli", "gps", "replay", str(log)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 20
    first = records[0]
    assert first["time"] == "2010-08-21T08:37:23Z"
    assert (first["mode"], first["valid"], first["sats_used"]) == (3, True, 6)
    assert first["lat"] == pytest.approx(51.925907, abs=1e-6)
    assert first["lon"] == pytest.approx(4.5776455, abs=1e-6)
    assert set(first) >= {
        "time", "mode", "lat", "lon", "alt_msl", "geoid_sep", "speed_mps", "course_deg",
        "sats_used", "hdop", "valid",
    }  # fmt: skip


def test_replay_of_a_missing_file_is_named(tmp_path: Path, capsys) -> None:
    assert main(["gps", "replay", str(tmp_path / "nope.log")]) == 2
    assert "nope.log" in capsys.readouterr().err
