"""The built-in vehicle's own tables (modes, parameters, .parm files) against independent
sources: pymavlink's mode map, ArduPilot's parameter file format, SkyCourier's shipped files.
The vehicle emulates the autopilot, so it must not borrow the bridge's reading of either."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firmware_bridge.dialect import mavutil
from firmware_bridge.modes import COPTER_MODES
from sim.vehicle import SHIPPED_PARAM_FILES, VehicleServer
from sim.vehicle.__main__ import build_parser, run
from sim.vehicle.copter import Copter
from sim.vehicle.modes import Mode
from sim.vehicle.params import DEFAULTS, INT8, ParamTable
from sim.vehicle.parm_file import PARAMS_DIR, ParmFileError, read_parm_file
from sim.vehicle.server import DEFAULT_HOME

ROOT = Path(__file__).resolve().parents[1]
ALL_SHIPPED = sorted(PARAMS_DIR.rglob("*.parm"))


def test_the_vehicle_imports_neither_the_companion_nor_the_bridge() -> None:
    probe = (
        "import sys, sim.vehicle, sim.vehicle.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'companion', 'firmware_bridge'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_mode_numbers_agree_with_pymavlink() -> None:
    # pymavlink's mode_mapping_acm is a table kept apart from both the vehicle and the bridge
    reference = {name: number for number, name in mavutil.mode_mapping_acm.items()}
    vehicle = {mode.name: mode.value for mode in Mode}
    for table in (vehicle, COPTER_MODES):
        shared = table.keys() & reference.keys()
        assert len(shared) >= 25
        assert {name: table[name] for name in shared} == {name: reference[name] for name in shared}
    assert vehicle == COPTER_MODES  # both transcribe ArduCopter's Mode::Number


def test_parm_files_are_read_as_ardupilot_writes_them(tmp_path: Path) -> None:
    parm = tmp_path / "x.parm"
    parm.write_text("# comment\n\nRTL_ALT 3000\nFENCE_RADIUS,800\nGRIP_GRAB\t1900 # servo\nA=1.5\n")
    assert read_parm_file(parm) == [
        ("RTL_ALT", 3000.0, 3),
        ("FENCE_RADIUS", 800.0, 4),
        ("GRIP_GRAB", 1900.0, 5),
        ("A", 1.5, 6),
    ]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("RTL_ALT", "expected 'NAME VALUE'"),
        ("RTL_ALT 1 2", "expected 'NAME VALUE'"),
        ("rtl_alt 1", "expected 'NAME VALUE'"),
        ("RTL_ALT high", "RTL_ALT has no numeric value"),
        ("RTL_ALT nan", "RTL_ALT has no numeric value"),
    ],
)
def test_a_malformed_parm_line_names_file_and_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    parm = tmp_path / "bad.parm"
    parm.write_text(f"FENCE_ENABLE 1\n{line}\n")
    with pytest.raises(ParmFileError, match=rf"bad\.parm:2: {complaint}"):
        read_parm_file(parm)


def test_an_unknown_parameter_in_a_file_names_file_and_line(tmp_path: Path) -> None:
    parm = tmp_path / "typo.parm"
    parm.write_text("FENCE_ENABLE 1\n\nFENCE_RADUIS 800\n")
    with pytest.raises(ParmFileError, match=r"typo\.parm:3: unknown parameter FENCE_RADUIS"):
        ParamTable(files=[parm])
    with pytest.raises(ParmFileError, match=r"typo\.parm"):
        VehicleServer(port=0, param_files=[parm])


@pytest.mark.parametrize("path", ALL_SHIPPED, ids=lambda p: p.name)
def test_every_shipped_parameter_exists_in_the_vehicle(path: Path) -> None:
    table = ParamTable(files=[path])
    for name, value, _ in read_parm_file(path):
        assert table[name] == pytest.approx(value, rel=1e-6), name


def test_the_vehicle_flies_the_shipped_parameters_by_default() -> None:
    assert [p.name for p in SHIPPED_PARAM_FILES] == ["delivery-copter.parm", "sitl-copter.parm"]
    shipped = ParamTable(files=SHIPPED_PARAM_FILES)
    stock = ParamTable()
    expected = {
        "FENCE_ENABLE": (1, 0), "FENCE_RADIUS": (800, 300), "FENCE_ALT_MAX": (120, 100),
        "BATT_LOW_MAH": (660, 0), "BATT_CRT_MAH": (330, 0), "BATT_FS_LOW_ACT": (2, 0),
        "GRIP_ENABLE": (1, 0), "SERVO8_FUNCTION": (28, 0), "SCR_ENABLE": (1, 0),
        "SIM_GRPS_PIN": (8, -1), "SERIAL2_BAUD": (921, 57), "RTL_ALT": (3000, 1500),
    }  # fmt: skip
    for name, (ours, ardupilot) in expected.items():
        assert (shipped[name], stock[name]) == (ours, ardupilot), name
    assert shipped.value_message("SIM_GRPS_PIN", 0).param_type == INT8
    # the server: shipped files by default, [] for stock ArduCopter, params on top of files
    server = VehicleServer(port=0, params={"FENCE_RADIUS": 500})
    assert (server.param("FENCE_RADIUS"), server.param("FENCE_ENABLE")) == (500, 1)
    assert VehicleServer(port=0, param_files=[]).param("FENCE_ENABLE") == 0


def test_the_table_has_one_entry_per_name() -> None:
    names = [spec.name for spec in DEFAULTS]
    assert len(names) == len(set(names))


def test_cli_param_files_replace_the_shipped_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_parser().parse_args([]).param_file is None
    first, second = tmp_path / "a.parm", tmp_path / "b.parm"
    args = build_parser().parse_args(["--param-file", str(first), "--param-file", str(second)])
    assert args.param_file == [first, second]
    first.write_text("FENCE_ENABLE 1\nNO_SUCH 1\n")
    assert run(build_parser().parse_args(["--port", "0", "--param-file", str(first)])) == 1
    assert "a.parm:2: unknown parameter NO_SUCH" in capsys.readouterr().err


def test_the_fence_refuses_to_arm_without_a_position() -> None:
    # SkyCourier's fence (circle and ceiling) needs a position estimate even in STABILIZE,
    # as SITL says: "PreArm: Fence enabled, need position estimate"
    copter = Copter(DEFAULT_HOME, ParamTable(files=SHIPPED_PARAM_FILES), ready_delay_s=10.0)
    while not copter.home_set:
        copter.step(0.02)
    assert not copter.arm(force=False)
    texts = [m.text for m, _ in copter.out.drain() if m.get_type() == "STATUSTEXT"]
    assert "Arm: Fence enabled, need position estimate" in texts
    while not copter.position_ok:
        copter.step(0.02)
    assert copter.arm(force=False)  # in STABILIZE, once the EKF uses GPS
