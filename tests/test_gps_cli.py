"""`skycourier gps replay` on a recorded receiver log, as a user runs it; `gps monitor` on
the emulated receiver, saying how it was configured and where that was saved."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from companion.cli import main
from companion.gps.tools import monitor
from sim.gps.neo6m import Neo6m
from sim.gps.pty_runner import Neo6mPty

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


def test_monitor_says_where_the_configuration_was_saved() -> None:
    receiver = Neo6m(eeprom=True)
    out = io.StringIO()
    with Neo6mPty(receiver, lambda _t: (47.285, 8.565, 500.0, 0.0, 0.0)) as runner:
        assert runner.path is not None
        monitor(runner.path, 9600, True, seconds=6.0, save=True, eeprom=True, out=out)
    text = out.getvalue()
    assert "[configured]" in text
    configured = next(line for line in text.splitlines() if line.startswith("[configured]"))
    assert "on UART1 at 115200 baud, 5 Hz; saved to BBR and EEPROM" in configured
    assert "config saved to BBR and EEPROM" in text.splitlines()[-1]
    assert receiver.saved_to == {"BBR", "EEPROM"}


def test_monitor_without_saving_says_the_configuration_is_lost_at_power_off() -> None:
    out = io.StringIO()
    with Neo6mPty(Neo6m(), lambda _t: (47.285, 8.565, 500.0, 0.0, 0.0)) as runner:
        assert runner.path is not None
        monitor(runner.path, 9600, True, seconds=5.0, out=out)
    assert "not saved (lasts until the receiver loses power)" in out.getvalue()


def test_monitor_flags_reach_the_configurator(monkeypatch) -> None:
    import companion.gps.tools as tools

    seen: dict = {}

    def fake_monitor(port: str, baud: int, configure: bool, **kwargs) -> int:
        seen.update(port=port, baud=baud, configure=configure, **kwargs)
        return 0

    monkeypatch.setattr(tools, "monitor", fake_monitor)
    argv = ["gps", "monitor", "--port", "/dev/ttyS9", "--configure", "--save", "--eeprom"]
    assert main(argv) == 0
    assert seen == {
        "port": "/dev/ttyS9", "baud": 9600, "configure": True, "save": True, "eeprom": True
    }  # fmt: skip
    assert main(["gps", "monitor", "--port", "/dev/ttyS9"]) == 0
    assert seen["save"] is False and seen["eeprom"] is False
