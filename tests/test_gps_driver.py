"""The GPS driver against the NEO-6M emulator over a real pty: UBX handshake with rate and
baud change, fixes on the bus, unplug/replug through a by-id link, silence, faults counted,
and clear errors for a port that is missing or is not a GPS."""

from __future__ import annotations

import errno
import itertools
import os
import pty
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

import serial

from companion.gps.driver import GpsDriver, GpsStatus
from companion.gps.fix import GpsFix
from companion.gps.ubx_config import UbxConfigurator
from sim.gps.neo6m import Faults, Neo6m
from sim.gps.pty_runner import Neo6mPty

HOME = (-35.363261, 149.165230, 604.0, 0.0, 0.0)


def here(_t: float) -> tuple[float, float, float, float, float]:
    return HOME


class Bus:
    """Collects what the driver publishes."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self.lock = threading.Lock()

    def __call__(self, item: object) -> None:
        with self.lock:
            self.items.append(item)

    def fixes(self) -> list[GpsFix]:
        with self.lock:
            return [i for i in self.items if isinstance(i, GpsFix)]

    def states(self) -> list[str]:
        with self.lock:
            return [i.state for i in self.items if isinstance(i, GpsStatus)]

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.items[-5:]}"
            time.sleep(0.02)


def test_handshake_sets_5hz_and_115200_then_fixes_flow(tmp_path: Path) -> None:
    receiver = Neo6m()  # factory state: 1 Hz at 9600 baud
    bus = Bus()
    with Neo6mPty(receiver, here, link_dir=tmp_path) as runner:
        assert runner.link is not None
        driver = GpsDriver(
            str(runner.link), bus, configurator=lambda now_baud: UbxConfigurator(
                baud=115200, current_baud=now_baud
            ),
        )  # fmt: skip
        with driver:
            bus.wait(lambda: driver.config_result is not None, "the UBX handshake", 15)
            assert receiver.baud == 115200 and receiver.meas_rate_ms == 200
            assert driver.baud == 115200
            before = len(bus.fixes())
            time.sleep(1.5)
            fixes = bus.fixes()[before:]
    # 5 Hz: consecutive epochs 0.2 s apart in the receiver's own UTC.
    steps = {round((b.time - a.time).total_seconds(), 3) for a, b in itertools.pairwise(fixes)}
    assert len(fixes) >= 4 and steps == {0.2}
    assert all(f.valid and f.mode == 3 for f in fixes)
    assert abs(fixes[-1].lat - HOME[0]) < 1e-6
    assert "ok" in bus.states()


def test_unplug_and_replug_keeps_the_decoder_state(tmp_path: Path) -> None:
    bus = Bus()
    with Neo6mPty(Neo6m(meas_rate_ms=200), here, link_dir=tmp_path) as runner:
        assert runner.link is not None
        with GpsDriver(str(runner.link), bus, silence_s=5.0) as driver:
            bus.wait(lambda: len(bus.fixes()) >= 3, "first fixes")
            sentences = driver.stats.sentences
            runner.unplug()
            bus.wait(lambda: "disconnected" in bus.states(), "disconnected")
            runner.replug()
            count = len(bus.fixes())
            bus.wait(lambda: len(bus.fixes()) >= count + 3, "fixes after replug")
            assert driver.stats.sentences > sentences  # counters carried across
    assert bus.states()[-1] == "ok"


def test_silence_and_checksum_faults_are_reported(tmp_path: Path) -> None:
    bus = Bus()
    faults = Faults(checksum_every=5, dropouts=((1.5, 4.5),))
    with (
        Neo6mPty(Neo6m(meas_rate_ms=200, faults=faults), here) as runner,
        GpsDriver(str(runner.path), bus, silence_s=1.0) as driver,
    ):
        bus.wait(lambda: "silent" in bus.states(), "silence detected")
        bus.wait(lambda: bus.states()[-1] == "ok", "fixes again after the dropout")
        assert driver.stats.checksum > 0
        assert runner.emulator.counters.corrupted >= driver.stats.checksum


def test_no_fix_is_published_as_a_status_and_never_as_valid(tmp_path: Path) -> None:
    bus = Bus()
    faults = Faults(no_fix=((1.0, 3.0),))
    with (
        Neo6mPty(Neo6m(meas_rate_ms=200, faults=faults), here) as runner,
        GpsDriver(str(runner.path), bus),
    ):
        bus.wait(lambda: "no-fix" in bus.states(), "loss of fix")
        bus.wait(lambda: bus.states()[-1] == "ok", "fix regained")
    invalid = [f for f in bus.fixes() if not f.valid]
    assert invalid and all(f.mode != 3 or f.quality == 0 for f in invalid)


def test_missing_port_is_named(tmp_path: Path) -> None:
    bus = Bus()
    port = str(tmp_path / "ttyUSB9")
    with GpsDriver(port, bus):
        bus.wait(lambda: bus.states(), "a status")
    status = next(i for i in bus.items if isinstance(i, GpsStatus))
    assert status.state == "disconnected"
    assert port in status.detail and "no such device" in status.detail


def test_a_device_that_is_not_a_gps_is_named(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            os.write(master, b"AT+CSQ\r\nOK\r\n\x00\xff" * 4)
            time.sleep(0.05)

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    bus = Bus()
    try:
        configure = lambda baud: UbxConfigurator(current_baud=baud)  # noqa: E731
        with GpsDriver(os.ttyname(slave), bus, configurator=configure):
            bus.wait(lambda: "not-a-gps" in bus.states(), "not-a-gps", timeout=15)
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)
    status = next(i for i in bus.items if isinstance(i, GpsStatus) and i.state == "not-a-gps")
    assert "no NMEA or UBX" in status.detail


def test_a_receiver_at_another_baud_rate_is_found_and_configured(tmp_path: Path) -> None:
    receiver = Neo6m(baud=38400)  # someone saved 38400 into its flash; we open at 9600
    bus = Bus()
    with Neo6mPty(receiver, here) as runner:
        assert runner.path is not None
        driver = GpsDriver(
            runner.path, bus, configurator=lambda now_baud: UbxConfigurator(
                baud=115200, current_baud=now_baud
            ),
        )  # fmt: skip
        with driver:
            bus.wait(lambda: driver.config_result is not None, "the UBX handshake", 30)
    assert receiver.baud == 115200 and driver.baud == 115200
    assert runner.garbled_bytes > 0  # it really was unreadable at 9600 first


def test_permission_denied_is_named(monkeypatch, tmp_path: Path) -> None:
    port = str(tmp_path / "ttyAMA0")

    def refuse(*_args: object, **_kwargs: object) -> None:
        # What pyserial raises when open(2) fails with EACCES.
        raise serial.SerialException(
            errno.EACCES, f"could not open port {port}: [Errno 13] Permission denied: '{port}'"
        )

    monkeypatch.setattr(serial, "Serial", refuse)
    bus = Bus()
    with GpsDriver(port, bus):
        bus.wait(lambda: bus.states(), "a status")
    status = next(i for i in bus.items if isinstance(i, GpsStatus))
    assert status.state == "disconnected"
    assert port in status.detail and "permission denied" in status.detail
    assert "dialout" in status.detail
