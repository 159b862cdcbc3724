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

from companion.gps.driver import STATES, GpsDriver, GpsStatus
from companion.gps.fix import GpsFix
from companion.gps.stream import nmea_checksum
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


# -- power cycles: detection and configuration again ------------------------------------


def five_hz_configurator(baud: int, **kwargs: object) -> Callable[[int], UbxConfigurator]:
    return lambda now_baud: UbxConfigurator(baud=baud, current_baud=now_baud, **kwargs)


def at_five_hz(fixes: list[GpsFix], count: int = 4) -> bool:
    """The last `count` fixes are valid and 0.2 s apart in the receiver's own UTC."""
    last = fixes[-count:]
    return (
        len(last) == count
        and all(f.valid and f.time is not None for f in last)
        and {round((b.time - a.time).total_seconds(), 3) for a, b in itertools.pairwise(last)}
        == {0.2}
    )


def in_order(states: list[str], expected: list[str]) -> bool:
    """Whether `expected` occurs in `states` in this order (others may come between)."""
    remaining = iter(states)
    return all(state in remaining for state in expected)


def test_replug_at_the_factory_rate_is_back_at_the_configured_rate_within_10_s(
    tmp_path: Path,
) -> None:
    """The acceptance case: a receiver whose configuration does not survive power loss (no
    backup battery, no EEPROM) is unplugged and plugged back: 9600 baud, 1 Hz, factory
    sentences, on a new tty behind the same by-id link."""
    receiver = Neo6m(backup_battery=False)
    bus = Bus()
    with Neo6mPty(receiver, here, link_dir=tmp_path) as runner:
        assert runner.link is not None
        driver = GpsDriver(
            str(runner.link), bus, configurator=five_hz_configurator(115200, save=True)
        )
        with driver:
            bus.wait(lambda: at_five_hz(bus.fixes()), "5 Hz fixes", 20)
            mark = len(bus.items)
            runner.unplug()
            bus.wait(lambda: "disconnected" in bus.states()[-3:], "disconnected")
            runner.replug()
            assert (receiver.baud, receiver.meas_rate_ms) == (9600, 1000)  # factory state
            replugged = time.monotonic()
            seen = len(bus.fixes())
            bus.wait(lambda: at_five_hz(bus.fixes()[seen:]), "5 Hz fixes after the replug", 20)
            recovery = time.monotonic() - replugged
            after = [i.state for i in bus.items[mark:] if isinstance(i, GpsStatus)]
    print(f"back at 5 Hz {recovery:.1f} s after the replug; statuses {after}")
    assert recovery < 10.0
    assert in_order(after, ["disconnected", "detecting", "configuring", "configured", "ok"])
    assert set(bus.states()) <= set(STATES)
    assert (receiver.baud, receiver.meas_rate_ms) == (115200, 200)
    assert driver.config_result is not None and driver.config_result.saved_to == ("BBR",)


def test_a_power_cycle_on_a_port_that_stays_open_is_noticed_and_undone(tmp_path: Path) -> None:
    """A UART-wired module on its own supply: the port never closes, the receiver comes back
    at 9600 while the host reads at 115200: bytes that never decode."""
    receiver = Neo6m(backup_battery=False)
    bus = Bus()
    with Neo6mPty(receiver, here) as runner:
        assert runner.path is not None
        driver = GpsDriver(runner.path, bus, configurator=five_hz_configurator(115200))
        with driver:
            bus.wait(lambda: at_five_hz(bus.fixes()), "5 Hz fixes", 20)
            mark, seen = len(bus.items), len(bus.fixes())
            runner.power_cycle()
            bus.wait(lambda: at_five_hz(bus.fixes()[seen:]), "5 Hz fixes after it", 20)
            after = [i.state for i in bus.items[mark:] if isinstance(i, GpsStatus)]
    assert in_order(after, ["detecting", "configuring", "configured", "ok"])
    assert (receiver.baud, receiver.meas_rate_ms) == (115200, 200)


def test_a_restart_at_the_same_rate_is_told_by_a_sentence_turned_off(tmp_path: Path) -> None:
    """Configured for 9600, its factory rate: after a power cycle without backup the bytes
    still decode, but at 1 Hz and with GLL, which configuration turned off."""
    receiver = Neo6m(backup_battery=False)
    bus = Bus()
    with Neo6mPty(receiver, here) as runner:
        assert runner.path is not None
        driver = GpsDriver(runner.path, bus, configurator=five_hz_configurator(9600))
        with driver:
            bus.wait(lambda: at_five_hz(bus.fixes()), "5 Hz fixes", 20)
            seen = len(bus.fixes())
            runner.power_cycle()
            bus.wait(lambda: receiver.meas_rate_ms == 1000, "the power cycle")
            bus.wait(lambda: at_five_hz(bus.fixes()[seen:]), "5 Hz fixes after it", 20)
    assert not receiver.enabled("GLL") and receiver.meas_rate_ms == 200


def test_a_saved_configuration_survives_the_replug(tmp_path: Path) -> None:
    receiver = Neo6m(backup_battery=True, eeprom=True)
    bus = Bus()
    with Neo6mPty(receiver, here, link_dir=tmp_path) as runner:
        assert runner.link is not None
        configurator = five_hz_configurator(115200, save=True, eeprom=True)
        with GpsDriver(str(runner.link), bus, configurator=configurator) as driver:
            bus.wait(lambda: at_five_hz(bus.fixes()), "5 Hz fixes", 20)
            assert receiver.saved_to == {"BBR", "EEPROM"}
            runner.unplug()
            bus.wait(lambda: "disconnected" in bus.states()[-3:], "disconnected")
            runner.replug(backup=False)  # a flat backup battery: the EEPROM still has it
            assert (receiver.baud, receiver.meas_rate_ms) == (115200, 200)
            seen = len(bus.fixes())
            bus.wait(lambda: at_five_hz(bus.fixes()[seen:]), "5 Hz fixes after the replug", 20)
    assert driver.baud == 115200
    assert driver.config_result is not None
    assert driver.config_result.saved_to == ("BBR", "EEPROM")


def test_a_usb_wired_receiver_keeps_talking_after_configuration(tmp_path: Path) -> None:
    """On the module's own USB port, per-port CFG-MSG rates matter: the eight-byte form,
    written for UART1, would set the USB rates to 0 and silence it."""
    receiver = Neo6m(wiring="USB")
    bus = Bus()
    with Neo6mPty(receiver, here) as runner:
        assert runner.path is not None
        driver = GpsDriver(runner.path, bus, configurator=five_hz_configurator(115200))
        with driver:
            bus.wait(lambda: at_five_hz(bus.fixes()), "5 Hz fixes over USB", 20)
    assert driver.config_result is not None and driver.config_result.port == "USB"
    assert receiver.baud == 9600  # UART1 untouched: there is no line rate on USB
    assert receiver.output_rate("GGA") == 1 and receiver.output_rate("GLL") == 0
    assert receiver.output_rate("GLL", port=1) == 1  # the other ports are left alone


def test_an_ack_at_the_old_rate_then_the_switch(tmp_path: Path) -> None:
    """The other behaviour the CFG-PRT description allows: ACK first, then the switch."""
    receiver = Neo6m(prt_ack_after_switch=False)
    bus = Bus()
    with Neo6mPty(receiver, here) as runner:
        assert runner.path is not None
        driver = GpsDriver(runner.path, bus, configurator=five_hz_configurator(57600))
        with driver:
            bus.wait(lambda: at_five_hz(bus.fixes()), "5 Hz fixes", 20)
    assert driver.config_result is not None and driver.config_result.baud_change_acked
    assert receiver.baud == driver.baud == 57600


def test_the_thread_survives_an_error_of_its_own_and_names_it(tmp_path: Path) -> None:
    bus = Bus()
    with Neo6mPty(Neo6m(meas_rate_ms=200), here) as runner:
        assert runner.path is not None
        driver = GpsDriver(runner.path, bus)
        decode = driver.assembler.decode
        calls = itertools.count()

        def flaky(stream, data, now):
            if next(calls) == 12:
                raise OverflowError("date value out of range")
            return decode(stream, data, now)

        driver.assembler.decode = flaky  # type: ignore[method-assign]
        with driver:
            bus.wait(lambda: "error" in bus.states(), "the error status")
            seen = len(bus.fixes())
            bus.wait(lambda: len(bus.fixes()) >= seen + 5, "fixes after the error")
    error = next(i for i in bus.items if isinstance(i, GpsStatus) and i.state == "error")
    assert "OverflowError: date value out of range" in error.detail
    assert bus.states()[-1] == "ok"


class StuckWrites(serial.Serial):
    """A port whose writes never drain, as with hardware flow control held off."""

    def write(self, data: bytes) -> int:
        raise serial.SerialTimeoutException("Write timeout")


def test_write_timeouts_are_counted_and_the_receiver_is_read_as_it_is(
    monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(serial, "Serial", StuckWrites)
    bus = Bus()
    with Neo6mPty(Neo6m(), here) as runner:
        assert runner.path is not None
        configurator = five_hz_configurator(115200, timeout=0.2, retries=0)
        with GpsDriver(runner.path, bus, configurator=configurator) as driver:
            bus.wait(lambda: "giving up" in last_detail(bus, "config-failed"), "giving up", 30)
            bus.wait(lambda: bus.states()[-1] == "ok", "1 Hz fixes all the same", 10)
    assert driver.write_timeouts >= 3
    assert "MON-VER poll: no answer" in last_detail(bus, "config-failed")


def last_detail(bus: Bus, state: str) -> str:
    with bus.lock:
        details = [i.detail for i in bus.items if isinstance(i, GpsStatus) and i.state == state]
    return details[-1] if details else ""


def test_dead_reckoning_is_no_fix(tmp_path: Path) -> None:
    """A hand-made stream (not the emulator): a receiver estimating its position."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    stop = threading.Event()
    lines = [
        b"$GPRMC,120000.00,A,4717.11437,N,00833.91522,E,0.004,77.52,010626,,,E*%s\r\n",
        b"$GPGGA,120000.00,4717.11399,N,00833.91590,E,6,08,1.01,499.6,M,48.0,M,,*%s\r\n",
    ]

    def receiver() -> None:
        for second in itertools.count():
            if stop.is_set():
                return
            for line in lines:
                body = line[1 : line.index(b"*")].replace(b"120000", b"1200%02d" % (second % 60))
                os.write(master, b"$%s*%02X\r\n" % (body, nmea_checksum(body)))
            time.sleep(0.1)

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    bus = Bus()
    try:
        with GpsDriver(os.ttyname(slave), bus):
            bus.wait(lambda: len(bus.fixes()) >= 3, "fixes")
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)
    assert all(not f.valid and f.dead_reckoning for f in bus.fixes())
    assert "dead reckoning" in last_detail(bus, "no-fix")
    assert "ok" not in bus.states()


def test_nothing_at_any_rate_is_silent_not_a_gps(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    tty.setraw(slave)
    bus = Bus()
    try:
        configure = lambda baud: UbxConfigurator(current_baud=baud)  # noqa: E731
        with GpsDriver(os.ttyname(slave), bus, configurator=configure):
            bus.wait(lambda: "silent" in bus.states(), "silent", timeout=15)
    finally:
        os.close(master)
        os.close(slave)
    assert "no data at any of 9600, 19200, 38400, 57600, 115200 baud" in last_detail(bus, "silent")
    assert "not-a-gps" not in bus.states()


def test_a_receiver_that_falls_silent_mid_epoch_has_that_epoch_flushed(tmp_path: Path) -> None:
    """A hand-made stream: one epoch's RMC and GGA, then nothing. Its end (the next time,
    or a learned GLL) never comes; silence publishes it."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    bus = Bus()
    epoch = [
        b"GPRMC,12000%d.00,A,4717.11437,N,00833.91522,E,0.004,77.52,010626,,,A",
        b"GPGGA,12000%d.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,",
    ]
    try:
        with GpsDriver(os.ttyname(slave), bus, silence_s=1.0):
            for second in range(3):  # enough for the rate detection, which samples them
                time.sleep(0.3)
                bodies = [body % second for body in epoch]
                os.write(master, b"".join(b"$%s*%02X\r\n" % (b, nmea_checksum(b)) for b in bodies))
            bus.wait(lambda: "silent" in bus.states(), "silent", timeout=15)
            bus.wait(lambda: any(f.time and f.time.second == 2 for f in bus.fixes()), "the last")
    finally:
        os.close(master)
        os.close(slave)
    fix = bus.fixes()[-1]
    assert fix.time is not None and fix.time.second == 2  # never closed by a next cycle
    assert fix.valid and fix.alt_msl_m == 499.6
