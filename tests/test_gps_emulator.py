"""The NEO-6M emulator: NMEA that pynmea2 accepts at the configured rate, UBX configuration
answered like the receiver (end to end with the configuration core), faults that do what
they claim, and the pty runner read by a real pyserial client."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pynmea2
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st
from pyubx2 import POLL, SET, UBXMessage, UBXReader

from companion.gps.ubx_config import UbxConfigurator, UbxNak
from sim.gps import UBLOX6, UBLOX7, Faults, Jump, Neo6m
from sim.gps.neo6m import DEFAULT_SKY, nmea_sentence, ubx_frame
from sim.gps.pty_runner import Neo6mPty

HOME = (47.285, 8.565, 500.0, 10.0, 90.0)


def here(t: float):
    return HOME


def lines(data: bytes) -> list[str]:
    return [line for line in data.decode("ascii").split("\r\n") if line]


def run(emu: Neo6m, seconds: float, provider=here, step: float = 0.01) -> bytes:
    out = bytearray()
    for i in range(round(seconds / step)):
        out += emu.tick(i * step, provider)
    return bytes(out)


def split_ubx(data: bytes) -> list[bytes]:
    frames, pos = [], data.find(b"\xb5\x62")
    while pos >= 0:
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        frames.append(data[pos : pos + 8 + length])
        pos = data.find(b"\xb5\x62", pos + 8 + length)
    return frames


def configure(emu: Neo6m, cfg: UbxConfigurator) -> int:
    """Run the configuration core against the emulator in memory; returns the frames
    exchanged. Rate switches are followed at once, as a transport would."""
    now, exchanged = 0.0, 0
    out = cfg.start(now)
    while not cfg.finished:
        replies = emu.receive(out, now) if out else b""
        out = b""
        for raw in split_ubx(replies):
            exchanged += 1
            out += cfg.receive(UBXReader.parse(raw), now)
        if cfg.pending_baud is not None:
            assert emu.baud == cfg.pending_baud
            out += cfg.baud_changed(now)
        if not out and not cfg.finished:
            now = cfg.deadline
            out = cfg.tick(now)
    return exchanged


# -- NMEA output --------------------------------------------------------------------------


def test_factory_output_parses_with_valid_checksums_in_receiver_order() -> None:
    data = Neo6m().tick(0.0, here)
    parsed = [pynmea2.parse(line, check=True) for line in lines(data)]
    assert [p.sentence_type for p in parsed] == [
        "RMC",
        "VTG",
        "GGA",
        "GSA",
        "GSV",
        "GSV",
        "GSV",
        "GLL",
    ]
    assert {p.talker for p in parsed} == {"GP"}
    rmc, vtg, gga, gsa = parsed[:4]
    assert gga.latitude == pytest.approx(HOME[0], abs=1e-6)
    assert gga.longitude == pytest.approx(HOME[1], abs=1e-6)
    assert (gga.altitude, gga.geo_sep, gga.gps_qual, gga.num_sats) == (500.0, "47.0", 1, "08")
    assert rmc.status == "A" and float(rmc.spd_over_grnd) == pytest.approx(10 * 3600 / 1852, 1e-3)
    assert float(vtg.spd_over_grnd_kmph) == pytest.approx(36.0)
    assert gsa.mode_fix_type == "3"


def test_gsv_is_numbered_and_lists_every_satellite() -> None:
    gsv = [pynmea2.parse(s) for s in lines(Neo6m().tick(0.0, here)) if "GSV" in s]
    assert [(int(g.num_messages), int(g.msg_num)) for g in gsv] == [(3, 1), (3, 2), (3, 3)]
    assert {int(g.num_sv_in_view) for g in gsv} == {11}
    prns = [getattr(g, f"sv_prn_num_{i}") for g in gsv for i in range(1, 5)]
    assert len([p for p in prns if p]) == 11


@pytest.mark.parametrize(("meas_ms", "expected"), [(1000, 3), (200, 15)])
def test_output_rate_follows_the_measurement_period(meas_ms: int, expected: int) -> None:
    data = run(Neo6m(meas_rate_ms=meas_ms), 3.0)
    ggas = [pynmea2.parse(s) for s in lines(data) if s.startswith("$GPGGA")]
    assert len(ggas) == expected
    stamps = [g.timestamp for g in ggas]
    assert stamps == sorted(stamps) and len(set(stamps)) == expected


def test_late_ticks_skip_cycles_instead_of_bursting() -> None:
    emu = Neo6m()
    emu.tick(0.0, here)
    assert len([s for s in lines(emu.tick(5.5, here)) if "GGA" in s]) == 1
    assert emu.tick(5.9, here) == b""
    assert emu.tick(6.0, here) != b""


def test_the_provider_returning_none_means_no_fix() -> None:
    parsed = [pynmea2.parse(s) for s in lines(Neo6m().tick(0.0, lambda t: None))]
    by_type = {p.sentence_type: p for p in parsed}
    assert by_type["RMC"].status == "V"
    assert by_type["GGA"].gps_qual == 0
    assert by_type["GSA"].mode_fix_type == "1"


# -- UBX, end to end with the configuration core ------------------------------------------


@pytest.mark.parametrize("version", [UBLOX6, UBLOX7])
def test_configuration_core_configures_the_emulator(version) -> None:
    emu = Neo6m(mon_ver=version)
    cfg = UbxConfigurator(baud=115200, current_baud=9600, save=True, ubx_nav=True)
    assert configure(emu, cfg) >= 12
    result = cfg.result()
    assert result.baud == emu.baud == 115200
    assert result.version.sw_version == version.sw_version
    assert (emu.meas_rate_ms, emu.config.dyn_model) == (200, 7)
    assert not emu.enabled("GLL") and all(emu.enabled(n) for n in ("GGA", "RMC", "GSA", "VTG"))
    assert ((0x01, 0x07) in emu.config.msg_rates) == version.nav_pvt
    assert emu.saved_to == {"BBR"}  # no flash on a NEO-6M, no EEPROM on this board
    # 5 Hz, no GLL, from the first tick on.
    out = lines(run(emu, 1.0))
    assert sum(s.startswith("$GPGGA") for s in out) == 5
    assert not any("GLL" in s for s in out)


def test_emulator_nak_reaches_the_caller_by_name() -> None:
    cfg = UbxConfigurator(baud=250000, current_baud=9600)  # not a rate the NEO-6M has
    configure(Neo6m(), cfg)
    with pytest.raises(UbxNak, match=r"CFG-PRT \(UART1 250000 baud"):
        cfg.result()


def ubx_replies(emu: Neo6m, data: bytes) -> list:
    return [UBXReader.parse(f) for f in split_ubx(emu.receive(data, 0.0))]


@pytest.mark.parametrize(
    ("request_frame", "why"),
    [
        (ubx_frame(0x06, 0x08, bytes.fromhex("6400 0100 0100")), "10 Hz: above 5 Hz"),
        (ubx_frame(0x06, 0x08, bytes.fromhex("c800 0200 0100")), "navRate must be 1"),
        (ubx_frame(0x06, 0x24, b"\x01\x00\x01" + bytes(33)), "dynModel 1 undefined"),
        (ubx_frame(0x06, 0x01, b"\x01\x07\x01"), "no NAV-PVT on u-blox 6"),
        (ubx_frame(0x06, 0x3E, b""), "CFG-GNSS unknown here"),
        (ubx_frame(0x06, 0x08, b"\x00"), "wrong length"),
    ],
)
def test_invalid_or_unsupported_cfg_gets_a_nak(request_frame: bytes, why: str) -> None:
    (reply,) = ubx_replies(Neo6m(mon_ver=UBLOX6), request_frame)
    assert reply.identity == "ACK-NAK", why


def test_polls_report_the_current_configuration() -> None:
    emu = Neo6m()
    (prt,) = ubx_replies(emu, ubx_frame(0x06, 0x00, b"\x01"))
    assert (prt.identity, prt.portID, prt.baudRate, prt.outNMEA) == ("CFG-PRT", 1, 9600, 1)
    (rate,) = ubx_replies(emu, ubx_frame(0x06, 0x08))
    assert (rate.measRate, rate.navRate) == (1000, 1)
    (msg,) = ubx_replies(emu, ubx_frame(0x06, 0x01, b"\xf0\x01"))
    assert msg.identity == "CFG-MSG" and msg.rateUART1 == 1


def test_bad_checksum_garbage_and_split_frames() -> None:
    emu = Neo6m()
    poll = ubx_frame(0x0A, 0x04)
    assert emu.receive(poll[:-1] + b"\x00", 0.0) == b""
    assert emu.counters.ubx_bad_checksum == 1
    assert emu.receive(b"$GPxxx\r\n\xb5\x00junk" + poll[:3], 0.0) == b""
    (version,) = ubx_replies(emu, poll[3:])
    assert version.identity == "MON-VER"
    assert emu.receive(b"\xb5\x62\x06\x00\xff\xff" + bytes(100), 0.0) == b""  # false sync
    assert len(emu._inbuf) < 200


_CFG = st.sampled_from([0x00, 0x01, 0x08, 0x09, 0x24, 0x3E])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.binary(max_size=60)
        | st.builds(lambda i, p: ubx_frame(0x06, i, p), _CFG, st.binary(max_size=40)),
        max_size=10,
    )
)
def test_arbitrary_input_never_raises_and_answers_are_well_formed(chunks: list[bytes]) -> None:
    emu = Neo6m(mon_ver=UBLOX7)
    for chunk in chunks:
        for raw in split_ubx(emu.receive(chunk, 0.0)):
            assert UBXReader.parse(raw).identity in (
                "ACK-ACK",
                "ACK-NAK",
                "MON-VER",
                "CFG-PRT",
                "CFG-MSG",
                "CFG-RATE",
                "CFG-NAV5",
            )
        assert len(emu._inbuf) <= 8 + 1024
    assert emu.baud in (4800, 9600, 19200, 38400, 57600, 115200, 230400)
    assert all(checksum_ok(s) for s in lines(emu.tick(0.0, here)))


def test_power_cycle_keeps_only_what_cfg_cfg_saved() -> None:
    emu = Neo6m()
    configure(emu, UbxConfigurator(baud=9600, current_baud=9600, save=False))
    emu.power_cycle()
    assert (emu.meas_rate_ms, emu.config.dyn_model, emu.enabled("GLL")) == (1000, 0, True)
    configure(emu, UbxConfigurator(baud=38400, current_baud=9600, save=True))
    emu.power_cycle()
    assert (emu.baud, emu.meas_rate_ms, emu.config.dyn_model, emu.enabled("GLL")) == (
        38400,
        200,
        7,
        False,
    )


def test_cfg_cfg_clear_and_load_restores_the_factory_state() -> None:
    emu = Neo6m()
    configure(emu, UbxConfigurator(baud=9600, current_baud=9600, save=True))
    assert emu.config.meas_rate_ms == 200
    clear_load = b"\xff\xff\x00\x00" + bytes(4) + b"\xff\xff\x00\x00" + b"\x03"
    (reply,) = ubx_replies(emu, ubx_frame(0x06, 0x09, clear_load))
    assert reply.identity == "ACK-ACK"
    assert (emu.config.meas_rate_ms, emu.config.dyn_model, emu.enabled("GLL")) == (1000, 0, True)


def test_ubx_input_is_ignored_when_cfg_prt_turns_it_off() -> None:
    emu = Neo6m()
    nmea_only = bytes.fromhex("01 00 0000 d0080000 80250000 0200 0300 0000 0000")
    (reply,) = ubx_replies(emu, ubx_frame(0x06, 0x00, nmea_only))
    assert reply.identity == "ACK-ACK"
    assert emu.receive(ubx_frame(0x0A, 0x04), 0.0) == b""


# -- faults -------------------------------------------------------------------------------


def checksum_ok(line: str) -> bool:
    try:
        pynmea2.parse(line, check=True)
    except pynmea2.ChecksumError:
        return False
    return True


def test_every_nth_sentence_has_a_bad_checksum() -> None:
    emu = Neo6m(faults=Faults(checksum_every=5))
    out = lines(run(emu, 5.0))
    bad = [i for i, s in enumerate(out) if not checksum_ok(s)]
    assert bad == [i for i in range(len(out)) if (i + 1) % 5 == 0]
    assert emu.counters.corrupted == len(bad) == emu.counters.sentences // 5


def test_random_checksum_errors_are_seeded() -> None:
    def corrupted(seed: int) -> list[int]:
        out = lines(run(Neo6m(seed=seed, faults=Faults(checksum_probability=0.2)), 10.0))
        return [i for i, s in enumerate(out) if not checksum_ok(s)]

    assert corrupted(1) == corrupted(1) != corrupted(2)
    assert 0.1 < len(corrupted(1)) / 80 < 0.3


def test_dropout_is_silence() -> None:
    emu = Neo6m(faults=Faults(dropouts=((2.0, 4.0),)))
    per_second = [run_window(emu, s) for s in range(6)]
    assert [bool(chunk) for chunk in per_second] == [True, True, False, False, True, True]
    assert emu.counters.silent_epochs == 2
    assert emu.receive(ubx_frame(0x0A, 0x04), 0.0) != b""


def run_window(emu: Neo6m, second: int) -> bytes:
    return b"".join(emu.tick(second + i / 10, here) for i in range(10))


def test_no_fix_period_reports_no_fix() -> None:
    emu = Neo6m(faults=Faults(no_fix=((1.0, 2.0),)))
    windows = [[pynmea2.parse(s) for s in lines(run_window(emu, s))] for s in range(3)]
    quality = [next(p.gps_qual for p in w if p.sentence_type == "GGA") for w in windows]
    status = [next(p.status for p in w if p.sentence_type == "RMC") for w in windows]
    assert quality == [1, 0, 1] and status == ["A", "V", "A"]
    assert emu.counters.no_fix_epochs == 1


def test_cold_start_has_no_fix_and_no_satellites_until_ttff() -> None:
    emu = Neo6m(faults=Faults(cold_start_s=3.0))
    ggas = [pynmea2.parse(s) for s in lines(run(emu, 5.0)) if "GGA" in s]
    assert [g.gps_qual for g in ggas] == [0, 0, 0, 1, 1]
    first = [s for s in lines(Neo6m(faults=Faults(cold_start_s=3.0)).tick(0, here)) if "GSV" in s]
    assert first == [nmea_sentence("GPGSV,1,1,00").decode().strip()]


def test_position_jump_moves_the_fix_by_the_offset() -> None:
    emu = Neo6m(faults=Faults(jumps=(Jump(1.0, 2.0, north_m=500.0, east_m=-300.0),)))
    fixes = [pynmea2.parse(s) for s in lines(run(emu, 3.0)) if "GGA" in s]
    lat0 = math.radians(HOME[0])
    north = (fixes[1].latitude - HOME[0]) * math.pi / 180 * 6_371_000
    east = (fixes[1].longitude - HOME[1]) * math.pi / 180 * 6_371_000 * math.cos(lat0)
    assert north == pytest.approx(500.0, abs=1.0) and east == pytest.approx(-300.0, abs=1.0)
    assert fixes[2].latitude == pytest.approx(HOME[0], abs=1e-6)


# -- on a pty -----------------------------------------------------------------------------


def read_lines(port: serial.Serial, seconds: float) -> list[bytes]:
    deadline = time.monotonic() + seconds
    data = bytearray()
    while time.monotonic() < deadline:
        data += port.read(4096)
    return data.split(b"\r\n")


def test_pyserial_client_reads_nmea_from_the_pty(tmp_path: Path) -> None:
    with (
        Neo6mPty(Neo6m(meas_rate_ms=200), here, link_dir=tmp_path) as runner,
        serial.Serial(runner.path, 9600, timeout=0.05) as port,
    ):
        assert runner.link is not None and runner.link.resolve() == Path(runner.path).resolve()
        got = [s.decode() for s in read_lines(port, 1.0) if s.startswith(b"$GPGGA")]
        assert len(got) >= 3
        assert all(checksum_ok(s) for s in got)
        assert runner.host_baud() == 9600


def test_wrong_host_rate_reads_garbage_until_it_matches(tmp_path: Path) -> None:
    with (
        Neo6mPty(Neo6m(meas_rate_ms=200), here) as runner,
        serial.Serial(runner.path, 115200, timeout=0.05) as port,
    ):
        data = b"".join(read_lines(port, 0.6))
        assert data and b"$" not in data and runner.garbled_bytes > 0
        port.baudrate = 9600
        port.reset_input_buffer()
        assert any(s.startswith(b"$GPRMC") for s in read_lines(port, 0.6))


def test_baud_change_over_the_pty_then_unplug_and_replug(tmp_path: Path) -> None:
    with Neo6mPty(Neo6m(), here, link_dir=tmp_path) as runner:
        assert runner.link is not None
        with serial.Serial(str(runner.link), 9600, timeout=0.05) as port:
            prt = UBXMessage(
                "CFG",
                "CFG-PRT",
                SET,
                portID=1,
                baudRate=57600,
                charLen=3,
                parity=4,
                inUBX=1,
                inNMEA=1,
                outUBX=1,
                outNMEA=1,
            ).serialize()
            port.write(prt)
            deadline = time.monotonic() + 2.0
            while runner.emulator.baud != 57600 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert runner.emulator.baud == 57600
            port.baudrate = 57600
            port.reset_input_buffer()
            assert any(s.startswith(b"$GPGGA") for s in read_lines(port, 1.2))
            runner.unplug()
            assert not runner.link.exists()
            with pytest.raises(serial.SerialException):
                read_lines(port, 0.2)
        runner.replug()
        assert runner.link.exists()
        # A power cycle without CFG-CFG: back to 9600.
        with serial.Serial(str(runner.link), 9600, timeout=0.05) as port:
            assert any(s.startswith(b"$GPGGA") for s in read_lines(port, 1.2))


# -- wiring, per-port rates and storage, checked against pyubx2's encoding ----------------


def cfg_msg_rates(**rates: int) -> bytes:
    """The eight-byte CFG-MSG for GGA, as pyubx2 encodes the manual's layout."""
    return UBXMessage("CFG", "CFG-MSG", SET, msgClass=0xF0, msgID=0x00, **rates).serialize()


def test_the_port_poll_answers_for_the_port_the_host_is_on() -> None:
    for wiring, port in (("UART1", 1), ("USB", 3)):
        (answer,) = ubx_replies(Neo6m(wiring=wiring), ubx_frame(0x06, 0x00))
        assert (answer.identity, answer.portID) == ("CFG-PRT", port)
        assert answer.baudRate == (9600 if port == 1 else 0)  # USB has no line rate
        assert (answer.inUBX, answer.outNMEA) == (1, 1)


def test_the_eight_byte_cfg_msg_sets_every_port_the_three_byte_one_its_own() -> None:
    usb = Neo6m(wiring="USB")
    (ack,) = ubx_replies(usb, cfg_msg_rates(rateUART1=1))  # "for UART1" only
    assert ack.identity == "ACK-ACK"
    assert usb.output_rate("GGA") == 0  # silenced on USB: the bug a USB-wired receiver had
    assert not any(line.startswith("$GPGGA") for line in lines(usb.tick(0.0, here)))
    # The three-byte form (GPS.G6-SW-10018 CFG-MSG "Set Message Rate"; bytes and Fletcher
    # checksum worked out by hand): the port it came in on.
    (ack,) = ubx_replies(usb, bytes.fromhex("b562060103 00f00001") + b"\xfb\x10")
    assert ack.identity == "ACK-ACK"
    assert (usb.output_rate("GGA"), usb.output_rate("GGA", port=1)) == (1, 1)
    (poll,) = ubx_replies(
        usb, UBXMessage("CFG", "CFG-MSG", POLL, msgClass=0xF0, msgID=0).serialize()
    )
    assert (poll.rateDDC, poll.rateUART1, poll.rateUSB, poll.rateSPI) == (0, 1, 1, 0)


@pytest.mark.parametrize(
    ("eeprom", "devices", "saved"),
    [
        (False, {"devBBR": 1, "devFlash": 1, "devEEPROM": 1}, {"BBR"}),  # no flash, no EEPROM
        (True, {"devBBR": 1, "devEEPROM": 1}, {"BBR", "EEPROM"}),
        (True, {"devFlash": 1}, set()),  # a ROM part: nothing to write to
    ],
)
def test_cfg_cfg_saves_to_the_devices_the_board_has(eeprom: bool, devices: dict, saved) -> None:
    emu = Neo6m(eeprom=eeprom)
    ubx_replies(emu, ubx_frame(0x06, 0x08, bytes.fromhex("c800 0100 0100")))  # 5 Hz
    save = UBXMessage("CFG", "CFG-CFG", SET, saveMask=b"\x1f\x1f\x00\x00", **devices).serialize()
    (ack,) = ubx_replies(emu, save)
    assert ack.identity == "ACK-ACK"  # a device that is not there is skipped, not refused
    assert emu.saved_to == saved


def test_what_survives_a_power_cycle_depends_on_the_backup_supply_and_the_eeprom() -> None:
    five_hz = ubx_frame(0x06, 0x08, bytes.fromhex("c800 0100 0100"))
    bbr_only = UBXMessage("CFG", "CFG-CFG", SET, saveMask=b"\x1f\x1f\x00\x00", devBBR=1)
    both = UBXMessage("CFG", "CFG-CFG", SET, saveMask=b"\x1f\x1f\x00\x00", devBBR=1, devEEPROM=1)
    emu = Neo6m(eeprom=True)
    ubx_replies(emu, five_hz + bbr_only.serialize())
    emu.power_cycle()  # the backup battery held
    assert emu.meas_rate_ms == 200
    emu.power_cycle(backup=False)  # flat battery: BBR lost, nothing in the EEPROM
    assert emu.meas_rate_ms == 1000
    ubx_replies(emu, five_hz + both.serialize())
    emu.power_cycle(backup=False)
    assert emu.meas_rate_ms == 200  # from the EEPROM


@pytest.mark.parametrize("after", [True, False])
def test_the_cfg_prt_ack_goes_out_at_the_rate_the_receiver_is_built_for(after: bool) -> None:
    emu = Neo6m(prt_ack_after_switch=after)
    prt = UBXMessage(
        "CFG", "CFG-PRT", SET, portID=1, baudRate=38400, charLen=3, parity=4, inUBX=1,
        inNMEA=1, outUBX=1, outNMEA=1,
    ).serialize()  # fmt: skip
    (ack,) = ubx_replies(emu, prt)
    assert ack.identity == "ACK-ACK"
    # A runner writes the answers at the rate in force once `receive` returns.
    assert emu.baud == (38400 if after else 9600)
    emu.tick(0.0, here)
    assert emu.baud == 38400  # switched once the ACK was out, at the latest


def test_two_d_spells_and_a_changing_sky() -> None:
    def sky(t: float) -> tuple:
        return DEFAULT_SKY[: 4 + int(t) % 6]

    emu = Neo6m(faults=Faults(two_d=((1.0, 2.0),)), sky=sky)
    windows = [[pynmea2.parse(s) for s in lines(run_window(emu, s))] for s in range(3)]
    modes = [next(p.mode_fix_type for p in w if p.sentence_type == "GSA") for w in windows]
    assert modes == ["3", "2", "3"]
    in_view = [{int(p.num_sv_in_view) for p in w if p.sentence_type == "GSV"} for w in windows]
    assert in_view == [{4}, {5}, {6}]


def test_a_power_cycle_on_the_pty_keeps_the_port_open(tmp_path: Path) -> None:
    with Neo6mPty(Neo6m(backup_battery=False), here) as runner:
        assert runner.path is not None
        runner.emulator.config.baud = 57600
        runner.power_cycle()
        assert runner.plugged and runner.emulator.baud == 9600
        with serial.Serial(runner.path, 9600, timeout=0.05) as port:
            assert any(s.startswith(b"$GPGGA") for s in read_lines(port, 1.2))


def test_a_usb_wired_receiver_on_the_pty_has_no_line_rate(tmp_path: Path) -> None:
    with (
        Neo6mPty(Neo6m(wiring="USB", meas_rate_ms=200), here) as runner,
        serial.Serial(runner.path, 115200, timeout=0.05) as port,
    ):
        assert not runner.simulate_baud_mismatch
        assert any(s.startswith(b"$GPGGA") for s in read_lines(port, 0.6))
