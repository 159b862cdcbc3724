"""`skycourier sim` end to end, as a user runs it: a process, files on disk, an exit status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from companion.cli import main
from firmware_bridge.vehicle import Vehicle
from tests.conftest import SITL_SKIP, sitl_binary

SKYCOURIER = [sys.executable, "-m", "companion.cli"]

#: ArduCopter SITL's reference delivery (shared/reference/ardupilot-sitl.md): the same flight,
#: simulated seconds per phase; release includes the 3 s hold, return the 5 s RTL loiter.
SITL_PHASES_S = {
    "takeoff": 17.4,
    "cruise": 53.9,
    "descend": 17.5,
    "release": 3.0,
    "climb": 12.3,
    "return": 64.7,
    "land": 36.8,
}
SITL_TAKEOFF_TO_DISARM_S = 205.4


def test_default_sim_delivers_and_writes_a_true_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [*SKYCOURIER, "sim", "--out", str(out), "--quiet", "--speedup", "20"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "delivered" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "delivered"
    names = [p["name"] for p in report["phases"]]
    assert names[-7:] == ["takeoff", "cruise", "descend", "release", "climb", "return", "land"]
    for phase in report["phases"]:
        assert phase["start_s"] is not None and phase["end_s"] >= phase["start_s"]
    # Out 500 m and back, plus the small wander of the descent and climb.
    assert 990 <= report["distance_m"] <= 1030
    assert 29.5 <= report["max_alt_m"] <= 31.0
    assert report["ideal_duration_s"] < report["duration_s"] < 1.5 * report["ideal_duration_s"]
    assert 0 < report["battery_used_pct"] < 100
    # Flies like ArduCopter: takeoff to disarm within 20 % of SITL's, each phase within 1.5x.
    # SITL's reference had nobody on the pad: time held for the simulated person in the
    # descent cone (report["vision"], when the models are built) is not counted.
    held: dict[str, float] = {}
    for hold in report["vision"].get("hold_events", []):
        held[hold["phase"]] = held.get(hold["phase"], 0.0) + (hold.get("held_s") or 0.0)
    # Nor had it a recipient check at the door (the hand-over's, when the face models are in).
    held["release"] = held.get("release", 0.0) + (report["handover"].get("check_s") or 0.0)
    flown_s = report["duration_s"] - sum(held.values())
    assert abs(flown_s / SITL_TAKEOFF_TO_DISARM_S - 1) <= 0.20
    durations = {p["name"]: p["duration_s"] - held.get(p["name"], 0.0) for p in report["phases"]}
    for name, sitl_s in SITL_PHASES_S.items():
        assert 1 / 1.5 <= durations[name] / sitl_s <= 1.5, (name, durations[name], sitl_s)
    png = (out / "flight.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    # The companion's own GPS: the emulated NEO-6M on a pty, configured over UBX by the
    # driver, at 5 Hz of simulated time, agreeing with the autopilot's GPS all flight.
    gps = report["companion_gps"]
    assert gps["receiver"]["baud"] == 115200
    assert "CFG-RATE (measRate 200 ms)" in gps["receiver"]["applied"]
    assert gps["valid_fixes"] >= 4 * report["duration_s"], gps["valid_fixes"]
    assert gps["integrity_alarms"] == []
    assert gps["divergence_from_autopilot_m"]["median"] < 5.0
    assert gps["decoder"]["checksum"] == 0
    assert "companion GPS:" in done.stdout


def test_order_file_chooses_the_drop_and_flying_it_again_starts_a_fresh_report(
    tmp_path: Path,
) -> None:
    order = tmp_path / "order.json"
    order.write_text(
        json.dumps({"mission_id": "o-7", "drop": {"distance_m": 120, "bearing_deg": 270}})
    )
    out = tmp_path / "r"
    argv = ["sim", "--order", str(order), "--out", str(out), "--quiet", "--speedup", "25",
            "--no-camera", "--recipient", "none"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mission_id"] == "o-7"
    assert 230 <= report["distance_m"] <= 260
    # The same order into the same folder: a new run, a new journal, no "mission exists".
    assert main(argv) == 0
    assert json.loads((out / "report.json").read_text())["outcome"] == "delivered"


def test_a_fence_smaller_than_the_drop_is_refused_before_arming(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    code = main(["sim", "--out", str(out), "--quiet", "--speedup", "25", "--no-camera",
                 "--param", "FENCE_RADIUS=300"])  # fmt: skip
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"].startswith("preflight refused: FENCE_RADIUS is 300 m")
    assert "FENCE_RADIUS" in capsys.readouterr().out
    assert report["duration_s"] is None  # it never flew


def test_invalid_config_names_the_field(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[flight]\ncruise_alt_m = 150\n")
    assert main(["sim", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "flight.cruise_alt_m" in err and "bad.toml" in err


def test_bad_order_file_is_named(tmp_path: Path, capsys) -> None:
    order = tmp_path / "order.json"
    order.write_text('{"drop": {"lat": 91, "lon": 0}}')
    assert main(["sim", "--order", str(order), "--out", str(tmp_path / "r")]) == 2
    assert "order.json" in capsys.readouterr().err


def test_missing_sitl_binary_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code = main(["sim", "--sitl", str(tmp_path / "arducopter"), "--out", str(tmp_path / "r")])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_vehicle_help_lists_the_vehicles_own_options(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["vehicle", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--port", "--speedup", "--home", "--wind", "--param-file", "--param"):
        assert option in out


def test_vehicle_command_serves_mavlink_on_tcp() -> None:
    proc = subprocess.Popen(
        [*SKYCOURIER, "vehicle", "--port", "0", "--speedup", "5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        found = re.search(r"tcp:127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert found is not None
        with Vehicle.connect(f"tcp:127.0.0.1:{found.group(1)}") as vehicle:
            state = vehicle.wait_until(lambda s: s.boot_time_s is not None, 10, "telemetry")
            assert state.mode == "STABILIZE"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.sitl
def test_sitl_flies_the_shipped_parameters_and_refuses_a_small_fence(tmp_path: Path) -> None:
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    small = main(["sim", "--sitl", str(binary), "--out", str(tmp_path / "small"), "--quiet",
                  "--no-camera", "--recipient", "none", "--speedup", "5",
                  "--param", "FENCE_RADIUS=300"])  # fmt: skip
    assert small == 1
    refused = json.loads((tmp_path / "small" / "report.json").read_text())
    assert refused["outcome"].startswith("preflight refused: FENCE_RADIUS is 300 m")
    out = tmp_path / "shipped"
    # Without the hand-over's recipient check, which SITL's reference flight did not have.
    assert main(["sim", "--sitl", str(binary), "--out", str(out), "--quiet", "--no-camera",
                 "--recipient", "none", "--speedup", "5"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "delivered" and report["autopilot"] == "ArduCopter SITL"
    durations = {p["name"]: p["duration_s"] for p in report["phases"]}
    for name, sitl_s in SITL_PHASES_S.items():
        assert 1 / 1.2 <= durations[name] / sitl_s <= 1.2, (name, durations[name], sitl_s)


@pytest.mark.sitl
def test_sitl_refusing_to_arm_for_a_4s_threshold_ends_the_attempt_at_once(tmp_path: Path) -> None:
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    out = tmp_path / "r"
    code = main(["sim", "--sitl", str(binary), "--out", str(out), "--quiet", "--no-camera",
                 "--recipient", "none", "--speedup", "5",
                 "--param", "BATT_LOW_VOLT=14"])  # fmt: skip
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "arming refused: Battery 1 low voltage failsafe"
    arm = next(p for p in report["phases"] if p["name"] == "arm")
    assert arm["duration_s"] < 3.0  # not retried until the preflight timeout
