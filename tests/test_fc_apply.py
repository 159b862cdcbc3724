"""`skycourier fc apply` against the built-in vehicle over TCP: a stock flight controller
gets the shipped parameters, a second run changes nothing, and what the flight controller
does not take (an unknown name, a fraction for an integer parameter) is reported and fails
the command. The .parm reader agrees with the built-in vehicle's own on the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from companion.cli import main
from firmware_bridge.param_apply import (
    ParmFileError,
    airframes,
    merged,
    read_parm_file,
    shipped_files,
)
from sim.vehicle import DEFAULT_HOME, VehicleServer
from sim.vehicle import parm_file as sim_parm_file
from sim.vehicle.params import ParamTable


def _apply(capsys: pytest.CaptureFixture[str], port: int, *extra: str) -> tuple[int, str]:
    code = main(["fc", "apply", "--connection", f"tcp:127.0.0.1:{port}", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def _table(text: str) -> tuple[dict[str, list[str]], str, list[str]]:
    """The report's rows by parameter name, its count line, and what follows it."""
    lines = [line for line in text.splitlines() if line.strip()]
    end = next(i for i, line in enumerate(lines) if line.endswith(" mismatched"))
    rows = {line.split()[0]: line.split() for line in lines[1:end]}
    return rows, lines[end], lines[end + 1 :]


def _rows(text: str) -> dict[str, list[str]]:
    return _table(text)[0]


def test_stock_flight_controller_gets_the_shipped_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with VehicleServer(DEFAULT_HOME, speedup=10.0, port=0, param_files=[]) as srv:
        code, text = _apply(capsys, srv.port, "--airframe", "sitl-copter")
        assert code == 0, text
        rows = _rows(text)
        wanted = merged(shipped_files("sitl-copter"))
        assert set(rows) == {e.name for e in wanted}
        assert rows["FENCE_ENABLE"][-1] == "set"  # stock ArduCopter: 0
        assert rows["OA_TYPE"][3:] == ["0", "2", "set"]  # the planner around the fence
        # "set" exactly where stock ArduCopter's value differs from the file's, as stored
        stock, applied = ParamTable(), ParamTable({e.name: e.value for e in wanted})
        differing = {e.name for e in wanted if applied[e.name] != stock[e.name]}
        assert {name for name, row in rows.items() if row[-1] == "set"} == differing
        sources = {e.name: e.source for e in wanted}
        assert sources["FENCE_ENABLE"].startswith("delivery-copter.parm:")
        assert sources["BATT_CAPACITY"].startswith("sitl-copter.parm:")  # from the overlay
        assert all(rows[name][1] == source for name, source in sources.items())
        for entry in wanted:
            assert srv.param(entry.name) == pytest.approx(entry.value, rel=1e-6), entry.name
        _, counts, after = _table(text)
        assert counts.endswith("0 refused, 0 mismatched")
        # the planner ArduPilot creates at boot: OA_TYPE set is only half the job
        assert any(line.startswith("reboot") and "OA_TYPE" in line for line in after), after
        code, text = _apply(capsys, srv.port, "--airframe", "sitl-copter")
        assert code == 0
        assert {row[-1] for row in _rows(text).values()} == {"unchanged"}


def test_what_the_flight_controller_does_not_take_is_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    extra = tmp_path / "extra.parm"
    extra.write_text("FENCE_TYPE 5.5\nNO_SUCH_PARAM 1\nFENCE_ALT_MAX 0.1\n")
    with VehicleServer(DEFAULT_HOME, speedup=10.0, port=0) as srv:
        code, text = _apply(capsys, srv.port, "--param-file", str(extra))
        assert code == 1, text
        rows = _rows(text)
        assert rows["FENCE_TYPE"][1:6] == ["extra.parm:1", "5.5", "7", "5", "mismatched"]
        assert rows["NO_SUCH_PARAM"][5] == "refused"
        assert "no parameter NO_SUCH_PARAM" in text
        assert rows["FENCE_ALT_MAX"][1] == "extra.parm:3"  # a later file replaces the value
        assert rows["FENCE_ALT_MAX"][-1] == "set"  # float32(0.1) read back equals float32(0.1)
        assert _table(text)[1].endswith("1 refused, 1 mismatched")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--airframe", "hexa-99"], "unknown airframe 'hexa-99' (shipped: quad-4s-5000"),
        (["--param-file", "/nonexistent.parm"], "cannot read parameter file"),
    ],
)
def test_bad_files_exit_2_naming_them(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["fc", "apply", "--connection", "tcp:127.0.0.1:1", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FENCE_ENABLE\n", ":1: expected 'NAME VALUE'"),
        ("# ok\nfence_enable 1\n", ":2: expected 'NAME VALUE'"),
        ("FENCE_ENABLE nan\n", ":1: FENCE_ENABLE has no float32 value"),
        ("FENCE_ENABLE 1e39\n", ":1: FENCE_ENABLE has no float32 value"),
        ("A 1 2\n", ":1: expected"),
    ],
)
def test_unreadable_lines_are_refused_naming_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.parm"
    path.write_text(text)
    with pytest.raises(ParmFileError, match=message):
        read_parm_file(path)


@pytest.mark.parametrize("airframe", airframes())
def test_reader_agrees_with_the_builtin_vehicles_on_shipped_files(airframe: str) -> None:
    for path in shipped_files(airframe):
        ours = [(e.name, e.value) for e in read_parm_file(path)]
        theirs = [(name, value) for name, value, _line in sim_parm_file.read_parm_file(path)]
        assert ours == theirs and ours
