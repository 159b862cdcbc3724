"""`skycourier check` against the emulated rig: the NEO-6M and the A7670 on real ptys, the
built-in vehicle over TCP, an image-folder camera and the real models all pass; then each
failure is named with its fix: a GPS at another baud, a missing device, a port that is not a
GPS, a modem at another baud, a SIM missing, an autopilot parameter preflight refuses, a
model never built. The GPS probe's sans-I/O core is tested on its own, hostile bytes too."""

from __future__ import annotations

import errno
import io
import json
import os
import pty
import shutil
import threading
import tty
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stdout, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.check import CheckRow, exit_status, format_table, run_checks
from companion.check_fc import check_flight_controller
from companion.check_serial import check_gps, check_modem, port_failure
from companion.check_vision import check_camera, check_models
from companion.cli import main
from companion.config import Config, VisionConfig
from companion.gps.identify import ReceiverProbe
from companion.gps.stream import nmea_checksum
from companion.gps.ubx_config import BAUD_RATES
from firmware_bridge.dialect import mavlink
from sim.gps.neo6m import Neo6m, ubx_frame
from sim.gps.pty_runner import Neo6mPty, host_speed
from sim.modem.a7670 import A7670
from sim.modem.pty_runner import A7670Pty
from sim.vehicle import DEFAULT_HOME, VehicleServer

HOME = (-35.363261, 149.165230, 604.0, 0.0, 0.0)
SCALE = 0.05  # the A7670's latencies x 0.05: it boots in 0.15 s


def here(_t: float) -> tuple[float, float, float, float, float]:
    return HOME


@pytest.fixture(scope="module")
def models_dir(sources) -> Path:
    """The detector model the [vision] default names, built once into the test cache."""
    from models import BUILD_DIR
    from models.build import build_models

    cache = BUILD_DIR / "test-cache"
    build_models(cache, [VisionConfig().variant], sources=sources)
    return cache


@pytest.fixture
def camera(sources, tmp_path: Path) -> Path:
    """An image-folder camera: one photo."""
    folder = tmp_path / "camera"
    folder.mkdir()
    images = {p.name: p for p in sources.images}
    shutil.copy(images["bus.jpg"], folder / "frame.jpg")
    return folder


@dataclass
class Rig:
    gps: Neo6mPty
    modem: A7670Pty
    vehicle: VehicleServer


@contextmanager
def rig(
    *, gps_baud: int = 9600, sim: str = "ready", params: dict[str, float] | None = None
) -> Iterator[Rig]:
    with ExitStack() as stack:
        gps = stack.enter_context(Neo6mPty(Neo6m(baud=gps_baud), here))
        modem = stack.enter_context(A7670Pty(A7670(time_scale=SCALE, sim=sim)))
        vehicle = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0, params=params).start()
        stack.callback(vehicle.stop)
        yield Rig(gps, modem, vehicle)


def toml(sections: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, options in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def rig_config(
    r: Rig, tmp_path: Path, camera: Path, models: Path, **changes: dict[str, object]
) -> Path:
    sections: dict[str, dict[str, object]] = {
        "vehicle": {"connection": f"tcp:127.0.0.1:{r.vehicle.port}"},
        "gps": {"port": r.gps.path, "baud": 9600},
        "modem": {"port": r.modem.path},
        "vision": {"source": str(camera), "models_dir": str(models), "threads": 1},
        "security": {"keys_dir": str(tmp_path / "keys")},
    }
    for name, options in changes.items():
        sections[name] = {**sections.get(name, {}), **options}
    path = tmp_path / "skycourier.toml"
    path.write_text(toml(sections))
    return path


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["check", *argv])
    return status, out.getvalue()


def by_check(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(row["device"], row["check"]): row for row in rows}


# -- against the rig ----------------------------------------------------------------------


def test_the_rig_passes_every_check(tmp_path: Path, camera: Path, models_dir: Path) -> None:
    with rig() as r:
        status, out = run_cli(
            "--config", str(rig_config(r, tmp_path, camera, models_dir)), "--json"
        )
    rows = json.loads(out)
    assert status == 0, out
    assert all(row["status"] in ("pass", "info") for row in rows), out
    found = by_check(rows)
    assert "u-blox 6 (software 7.03" in found["gps", "identity"]["detail"]
    assert "at 9600 baud" in found["gps", "identity"]["detail"]
    assert "Model: A7670G-LLSE" in found["modem", "identity"]["detail"]
    assert found["modem", "SIM"]["detail"] == "SIM ready"
    assert found["modem", "registration"]["status"] == "info"
    heartbeat = found["flight controller", "heartbeat"]["detail"]
    assert "MAV_AUTOPILOT_ARDUPILOTMEGA" in heartbeat and "MAV_TYPE_QUADROTOR" in heartbeat
    assert found["flight controller", "firmware"]["detail"].startswith("firmware 4.7.0 (dev")
    assert "the preflight checks pass" in found["flight controller", "parameters"]["detail"]
    assert found["camera", "frame"]["detail"].startswith("810 x 1080 frame")
    assert "yolov4-tiny-int8.onnx loads" in found["models", "detector"]["detail"]
    assert found["models", "face models"]["status"] == "pass"
    assert all(row["fix"] is None for row in rows)


def test_failures_are_named_with_their_fix(tmp_path: Path, camera: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    with rig(sim="absent", params={"FENCE_ENABLE": 0}) as r:
        config = rig_config(r, tmp_path, camera, empty, gps={"baud": 38400, "configure": False})
        status, out = run_cli("--config", str(config))
    assert status == 1
    lines = out.splitlines()

    def row_and_fix(device: str, check: str) -> tuple[str, str]:
        words = [*device.split(), *check.split()]
        index = next(i for i, line in enumerate(lines) if line.split()[: len(words)] == words)
        return lines[index], lines[index + 1].strip()

    gps, fix = row_and_fix("gps", "baud")
    assert "FAIL" in gps and "answers at 9600 baud" in gps and "configured 38400" in gps
    assert fix == f"fix: set baud = 9600 in [gps] of {config}"
    sim, fix = row_and_fix("modem", "SIM")
    assert "FAIL" in sim and "SIM not inserted" in sim
    assert fix.startswith("fix: insert the SIM")
    fence, fix = row_and_fix("flight controller", "parameter FENCE_ENABLE")
    assert "FAIL" in fence and "FENCE_ENABLE is 0" in fence and "set FENCE_ENABLE 1" in fence
    assert f"skycourier fc apply --connection tcp:127.0.0.1:{r.vehicle.port}" in fix
    model, fix = row_and_fix("models", "detector")
    assert "FAIL" in model and str(empty / "yolov4-tiny-int8.onnx") in model
    assert fix == f"fix: skycourier models build --variant int8 --out {empty}"
    assert "camera" in out and out.rstrip().endswith("check(s) failed")


def test_a_missing_device_names_its_path_and_where_to_look(tmp_path: Path) -> None:
    gone = str(tmp_path / "ttyUSB9")
    config = Config().updated(
        gps={"port": gone}, modem={"port": gone}, vehicle={"connection": f"{gone}:57600"}
    )
    for check, device, udev in (
        (check_gps, "gps", "/dev/skycourier-gps"),
        (check_modem, "modem", "/dev/skycourier-modem"),
        (check_flight_controller, "flight controller", "/dev/skycourier-fc"),
    ):
        (row,) = check(config, "skycourier.toml")
        assert (row.device, row.check, row.status) == (device, "port", "fail")
        assert row.detail == f"{gone}: no such device"
        assert row.fix is not None and "ls -l /dev/serial/by-id/" in row.fix and udev in row.fix
        assert "of skycourier.toml" in row.fix


def test_a_port_that_is_not_a_gps_is_named(tmp_path: Path) -> None:
    with A7670Pty(A7670(time_scale=SCALE)) as modem:
        config = Config().updated(gps={"port": modem.path})
        (row,) = check_gps(config, "skycourier.toml")
    assert (row.device, row.status) == ("gps", "fail")
    assert modem.path in row.detail and "9600, 115200, 19200, 38400, 57600 baud" in row.detail
    assert row.fix is not None and "set port in [gps] of skycourier.toml" in row.fix


def test_a_modem_at_another_baud_is_found_there() -> None:
    with A7670Pty(A7670(time_scale=SCALE)) as modem:
        config = Config().updated(modem={"port": modem.path, "baud": 9600})
        (row,) = check_modem(config, "skycourier.toml")
    assert (row.device, row.check, row.status) == ("modem", "baud", "fail")
    assert "answers at 115200 baud, not at the configured 9600" in row.detail
    assert row.fix is not None and row.fix.startswith(
        "set baud = 115200 in [modem] of skycourier.toml"
    )


@contextmanager
def mavlink_pty(baud: int) -> Iterator[str]:
    """A pty whose far end sends an autopilot's HEARTBEAT five times a second, readable
    only when the host's rate is `baud` (otherwise noise, as a UART at the wrong rate)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    stop = threading.Event()
    mav = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
    frame = mav.heartbeat_encode(
        mavlink.MAV_TYPE_QUADROTOR, mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 0
    ).pack(mav)

    def run() -> None:
        while not stop.wait(0.2):
            with suppress(OSError):
                os.read(master, 4096)  # what the host sends goes nowhere
            with suppress(OSError):
                os.write(master, frame if host_speed(master) == baud else b"\xff" * len(frame))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield os.ttyname(slave)
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)


def test_a_flight_controller_at_another_baud_is_found_there() -> None:
    with mavlink_pty(115200) as path:
        config = Config().updated(vehicle={"connection": f"{path}:57600", "connect_timeout_s": 1.0})
        (row,) = check_flight_controller(config, "skycourier.toml")
    assert (row.device, row.check, row.status) == ("flight controller", "baud", "fail")
    assert f"MAVLink at 115200 baud on {path}, not at the configured 57600" in row.detail
    assert row.fix is not None
    assert row.fix.startswith(f'set connection = "{path}:115200" in [vehicle] of skycourier.toml')


def test_a_missing_camera_fails_at_once_with_its_fix() -> None:
    config = Config().updated(vision={"source": "/dev/video97"})
    (row,) = check_camera(config, "skycourier.toml")
    assert (row.device, row.status, row.detail) == (
        "camera",
        "fail",
        "/dev/video97: does not exist",
    )
    assert row.fix is not None and "ls -l /dev/video*" in row.fix


def test_missing_face_packages_get_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, camera: Path, models_dir: Path
) -> None:
    from companion.identity.errors import FaceModelError

    def unavailable() -> None:
        raise FaceModelError("face verification needs the Python package 'dlib'")

    monkeypatch.setattr("companion.identity.faces.load_models", unavailable)
    config = Config().updated(vision={"source": str(camera), "models_dir": str(models_dir)})
    detector, faces = check_models(config, "skycourier.toml")
    assert detector.status == "pass"
    assert (faces.check, faces.status) == ("face models", "fail")
    assert faces.fix == (
        "install the face packages into skycourier's environment: "
        "pip install dlib-bin face_recognition_models"
    )


def test_unset_devices_are_skipped_unless_the_preflight_needs_them() -> None:
    relaxed = Config().updated(preflight={"companion_gps": False, "uplink": False})
    assert [r.status for r in check_gps(relaxed, "f") + check_modem(relaxed, "f")] == [
        "skip",
        "skip",
    ]
    (gps,) = check_gps(Config(), "f")
    assert gps.status == "fail" and "[preflight] companion_gps is on" in gps.detail
    assert gps.fix is not None and "companion_gps = false" in gps.fix


def test_an_autopilot_that_is_not_there_gets_a_fix() -> None:
    server = VehicleServer(DEFAULT_HOME, port=0).start()
    port = server.port
    server.stop()  # nothing listens there now
    config = Config().updated(vehicle={"connection": f"tcp:127.0.0.1:{port}"})
    (row,) = check_flight_controller(config, "skycourier.toml")
    assert (row.check, row.status) == ("heartbeat", "fail")
    assert f"127.0.0.1:{port}" in row.detail
    assert row.fix is not None and "start the autopilot listening" in row.fix


def test_the_flight_controller_is_checked_over_a_signed_link(tmp_path: Path) -> None:
    from companion.security.keys import KeyStore

    KeyStore(tmp_path / "keys").init_drone("skycourier-7")
    server = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0).start()
    try:
        config = Config().updated(
            vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
            security={"keys_dir": str(tmp_path / "keys")},
        )
        rows = check_flight_controller(config, "f")
    finally:
        server.stop()
    assert [(r.check, r.status) for r in rows] == [
        ("heartbeat", "pass"),
        ("firmware", "pass"),
        ("parameters", "pass"),
    ]


# -- bounds, output -----------------------------------------------------------------------


def test_a_device_that_hangs_or_breaks_becomes_one_failing_row() -> None:
    release = threading.Event()

    def hangs(_config: Config, _where: str) -> list[CheckRow]:
        release.wait(30)
        return []

    def breaks(_config: Config, _where: str) -> list[CheckRow]:
        raise RuntimeError("boom")

    def fine(_config: Config, _where: str) -> list[CheckRow]:
        return [CheckRow("camera", "frame", "pass", "ok")]

    try:
        rows = run_checks(
            Config(), "f", [("modem", hangs, 0.2), ("gps", breaks, 5.0), ("camera", fine, 5.0)]
        )
    finally:
        release.set()
    assert [(r.device, r.check, r.status) for r in rows] == [
        ("modem", "answer", "fail"),
        ("gps", "check", "fail"),
        ("camera", "frame", "pass"),
    ]
    assert "no result within 0.2 s" in rows[0].detail
    assert "RuntimeError: boom" in rows[1].detail
    assert exit_status(rows) == 1 and exit_status(rows[2:]) == 0


def test_the_table_shows_each_fix_under_its_failure() -> None:
    rows = [
        CheckRow("gps", "identity", "pass", "u-blox 6"),
        CheckRow("modem", "port", "fail", "/dev/ttyUSB2: permission denied", "add to dialout"),
        CheckRow("modem", "registration", "info", "LTE: searching"),
        CheckRow("camera", "frame", "skip", "vision off"),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["DEVICE", "CHECK", "RESULT", "DETAIL"]
    assert lines[2].split()[:3] == ["modem", "port", "FAIL"]
    assert lines[3].strip() == "fix: add to dialout"
    assert lines[-1] == "1 check(s) failed, 1 skipped"
    assert exit_status([rows[0], rows[2], rows[3]]) == 0  # info and skip never fail


@pytest.mark.parametrize(
    ("err", "detail", "in_fix"),
    [
        (errno.EACCES, "permission denied", "dialout"),
        (errno.EBUSY, "busy", "fuser -v /dev/ttyS0"),
        (errno.EAGAIN, "busy", "systemctl stop skycourier"),
        (errno.ENOTTY, "not a serial port", "ls -l /dev/serial/by-id/"),
    ],
)
def test_each_port_error_gets_its_fix(err: int, detail: str, in_fix: str) -> None:
    exc = serial.SerialException(err, f"could not open port /dev/ttyS0: [Errno {err}]")
    row = port_failure("gps", "/dev/ttyS0", exc, "port in [gps]", "f")
    assert row.status == "fail" and detail in row.detail
    assert row.fix is not None and in_fix in row.fix


# -- the GPS probe core -------------------------------------------------------------------


def nmea(body: str) -> bytes:
    return f"${body}*{nmea_checksum(body.encode()):02X}\r\n".encode()


EPOCH = nmea("GPGGA,120000.00,3521.79566,S,14909.91380,E,1,08,0.92,604.0,M,47.0,M,,") + nmea(
    "GPRMC,120000.00,A,3521.79566,S,14909.91380,E,0.000,0.00,010626,,,A"
)
MON_VER = ubx_frame(0x0A, 0x04, b"7.03 (45969)".ljust(30, b"\0") + b"00040007".ljust(10, b"\0"))


def test_the_probe_moves_on_from_noise_and_asks_mon_ver_where_nmea_decodes() -> None:
    probe = ReceiverProbe([38400, 9600], sample_s=1.0, answer_s=0.5)
    assert probe.start(0.0) == b"" and probe.rate == 38400
    assert probe.receive(bytes(range(0x80, 0xFF)), 0.5) == b""
    assert probe.tick(1.0) == b"" and probe.rate == 9600  # noise only: next rate
    poll = probe.receive(EPOCH, 1.2)
    assert poll.startswith(b"\xb5\x62\x0a\x04")  # MON-VER poll
    assert probe.tick(1.8) == poll  # unanswered: asked again
    probe.receive(MON_VER[:7], 1.9)
    probe.receive(MON_VER[7:], 1.95)
    assert probe.finished
    result = probe.result()
    assert result.baud == 9600 and result.rates_tried == (38400, 9600)
    assert result.version is not None and result.version.sw_version == "7.03 (45969)"
    assert result.version.generation == "u-blox 6"


def test_the_probe_gives_up_on_a_silent_port_and_on_unanswered_polls() -> None:
    silent = ReceiverProbe(BAUD_RATES, sample_s=1.0)
    silent.start(0.0)
    for t in range(1, 6):
        silent.tick(float(t))
    assert silent.finished and silent.result().baud is None
    assert silent.result().heard_bytes == 0 and silent.result().rates_tried == BAUD_RATES
    mute = ReceiverProbe([9600], answer_s=0.5, polls=2)
    mute.start(0.0)
    mute.receive(EPOCH, 0.1)
    mute.tick(0.6)
    mute.tick(1.1)
    assert mute.finished and mute.result().baud == 9600 and mute.result().version is None


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.tuples(st.binary(max_size=300), st.floats(0, 0.6)), max_size=40),
    noise=st.booleans(),
)
def test_the_probe_never_raises_and_noise_never_counts_as_a_receiver(
    chunks: list[tuple[bytes, float]], noise: bool
) -> None:
    probe = ReceiverProbe(BAUD_RATES, sample_s=1.0, answer_s=0.5)
    now = 0.0
    probe.start(now)
    for data, step in chunks:
        now += step
        if noise:  # what a UART at the wrong rate reads: no "$", no UBX sync
            data = bytes(b | 0x80 for b in data).replace(b"\xb5", b"\xb4")
        probe.receive(data, now)
        probe.tick(now)
    for _ in range(len(BAUD_RATES) + 3):
        now += 1.0
        probe.tick(now)
    assert probe.finished
    if noise:
        assert probe.result().baud is None


# -- against ArduPilot itself -------------------------------------------------------------

SITL_INSTANCE = 8  # a SITL instance no other test uses


@pytest.mark.sitl
def test_arducopter_sitl_as_shipped_passes(tmp_path: Path) -> None:
    from firmware_bridge.errors import BridgeError
    from firmware_bridge.vehicle import Vehicle
    from sim.sitl import SitlProcess
    from tests.conftest import SITL_SKIP, sitl_binary
    from tests.waiting import wait_until

    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    sitl = SitlProcess(binary, speedup=5.0, workdir=tmp_path / "sitl", instance=SITL_INSTANCE)
    sitl.start()
    try:
        # The watchdog's parameters exist once its Lua script runs, a few seconds after boot.
        with Vehicle.connect(sitl.connection, connect_timeout_s=30.0) as vehicle:

            def watchdog_up() -> bool:
                try:
                    return vehicle.get_param("SCW_ENABLE") == 1
                except BridgeError:
                    return False

            wait_until(watchdog_up, "the companion watchdog's parameters", 60.0)
        config = Config().updated(vehicle={"connection": sitl.connection})
        rows = check_flight_controller(config, "f")
    finally:
        sitl.stop()
    assert [(r.check, r.status) for r in rows] == [
        ("heartbeat", "pass"),
        ("firmware", "pass"),
        ("parameters", "pass"),
    ], rows
    assert "MAV_AUTOPILOT_ARDUPILOTMEGA" in rows[0].detail
    assert rows[1].detail.startswith("firmware 4."), rows[1]
