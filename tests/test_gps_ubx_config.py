"""UBX start-up configuration core: scripted exchanges, receiver identification, baud-rate
detection, and arbitrary replies that must never raise anything but the documented errors."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyubx2 import GET, POLL, SET, UBXMessage, UBXReader
from pyubx2.exceptions import UBXMessageError, UBXParseError, UBXTypeError

from companion.gps.ubx_config import (
    DYN_MODEL_AIRBORNE_2G,
    NAV_MSG_IDS,
    NMEA_MSG_IDS,
    ReceiverVersion,
    UbxBaudError,
    UbxConfigError,
    UbxConfigurator,
    UbxNak,
    UbxTimeout,
    candidate_bauds,
    detect_baud,
    parse_mon_ver,
    score_baud_samples,
    ubx_checksum,
)


def frame(cls: int, msg_id: int, payload: bytes = b"") -> bytes:
    body = struct.pack("<BBH", cls, msg_id, len(payload)) + payload
    return b"\xb5\x62" + body + ubx_checksum(body)


def mon_ver(sw: str, hw: str, *extensions: str) -> UBXMessage:
    payload = sw.encode().ljust(30, b"\0") + hw.encode().ljust(10, b"\0")
    payload += b"".join(e.encode().ljust(30, b"\0") for e in extensions)
    return UBXReader.parse(frame(0x0A, 0x04, payload))


def ack(cls: int, msg_id: int, ok: bool = True) -> UBXMessage:
    return UBXReader.parse(frame(0x05, 0x01 if ok else 0x00, bytes((cls, msg_id))))


def prt_answer(baud: int, port: int = 1) -> UBXMessage:
    return UBXReader.parse(
        UBXMessage("CFG", "CFG-PRT", GET, portID=port, baudRate=baud).serialize()
    )


class CfgMsgRate:
    """A three-byte CFG-MSG "Set Message Rate", decoded by hand from the manual's layout
    (GPS.G6-SW-10018, CFG-MSG: msgClass U1, msgID U1, rate U1): pyubx2 knows only the
    eight-byte form."""

    identity = "CFG-MSG"

    def __init__(self, data: bytes) -> None:
        self.msg_id = b"\x01"  # as pyubx2 gives it
        self.msgClass, self.msgID, self.rate = data[6:9]


NEO6M = ("7.03 (45969)", "00040007")
UBLOX7 = ("1.00 (59842)", "00070000", "PROTVER 14.00", "GPS;SBAS;GLO;QZSS")


def sent(data: bytes):
    """What the core sent, parsed as the receiver would (input messages are SET/POLL)."""
    assert data[:2] == b"\xb5\x62"
    assert ubx_checksum(data[2:-2]) == data[-2:]
    if data[2:6] == b"\x06\x01\x03\x00":
        return CfgMsgRate(data)
    # A 0- or 1-byte payload is a poll (MON-VER, CFG-PRT of one port); the rest are SETs.
    return UBXReader.parse(data, msgmode=SET if len(data) > 8 + 1 else POLL)


def run_happy_path(cfg: UbxConfigurator, version: UBXMessage, port: int = 1) -> list[UBXMessage]:
    """Drive `cfg` answering everything as a well-behaved receiver wired to `port` (1
    UART1, 3 USB); returns what it sent after the port poll."""
    log = []
    out = cfg.start(0.0)
    assert UBXReader.parse(out, msgmode=POLL).identity == "MON-VER"  # POLL
    out = cfg.receive(version, 0.1)
    poll = UBXReader.parse(out, msgmode=POLL)
    assert poll.identity == "CFG-PRT" and len(out) == 8  # no port id: "the used port"
    out = cfg.receive(prt_answer(cfg.current_baud if port == 1 else 0, port), 0.1)
    while not cfg.finished:
        msg = sent(out)
        log.append(msg)
        if msg.identity == "CFG-PRT" and cfg.baud != cfg.current_baud and len(out) > 9:
            assert cfg.receive(ack(0x06, 0x00), 0.2) == b""
            assert cfg.pending_baud == cfg.baud and cfg.deadline is None
            poll = cfg.baud_changed(0.3)
            assert UBXReader.parse(poll, msgmode=POLL).identity == "CFG-PRT"
            out = cfg.receive(prt_answer(cfg.baud), 0.4)
            continue
        out = cfg.receive(ack(0x06, msg.msg_id[0]), 0.5)
    return log


def test_happy_path_sends_the_whole_sequence_and_switches_baud() -> None:
    cfg = UbxConfigurator(baud=115200, current_baud=9600, save=True)
    log = run_happy_path(cfg, mon_ver(*NEO6M))
    assert [m.identity for m in log] == (
        ["CFG-PRT", "CFG-RATE", "CFG-NAV5"] + ["CFG-MSG"] * 6 + ["CFG-CFG"]
    )
    prt, rate, nav5 = log[:3]
    assert (prt.portID, prt.baudRate, prt.inUBX, prt.inNMEA, prt.outUBX, prt.outNMEA) == (
        1,
        115200,
        1,
        1,
        1,
        1,
    )
    assert (prt.charLen, prt.parity, prt.nStopBits) == (3, 4, 0)  # 8N1
    assert (rate.measRate, rate.navRate, rate.timeRef) == (200, 1, 1)  # 5 Hz, GPS time
    assert nav5.dyn == 1 and nav5.dynModel == DYN_MODEL_AIRBORNE_2G == 7
    names = {v: k for k, v in NMEA_MSG_IDS.items()}
    rates = {names[m.msgID]: m.rate for m in log[3:9]}
    assert all(m.msgClass == 0xF0 for m in log[3:9])
    assert {k for k, v in rates.items() if v} == {"GGA", "RMC", "GSA", "GSV", "VTG"}
    assert rates["GLL"] == 0
    # The NEO-6M has no flash: BBR only, as no EEPROM was named.
    assert (log[-1].devBBR, log[-1].devFlash, log[-1].devEEPROM) == (1, 0, 0)
    assert log[-1].saveMask == b"\x1f\x1f\x00\x00"
    result = cfg.result()
    assert result.baud == 115200 and result.saved_to == ("BBR",) and result.baud_change_acked
    assert result.port == "UART1" and result.version.generation == "u-blox 6"
    assert len(result.applied) == 10
    assert result.describe() == (
        "u-blox 6 (software 7.03 (45969)) on UART1 at 115200 baud, 5 Hz; saved to BBR"
    )


def test_same_baud_needs_no_switch() -> None:
    cfg = UbxConfigurator(baud=9600, current_baud=9600)
    log = run_happy_path(cfg, mon_ver(*NEO6M))
    assert cfg.pending_baud is None
    assert log[0].identity == "CFG-PRT" and cfg.result().baud == 9600


@pytest.mark.parametrize(
    ("version", "nav"),
    [(NEO6M, ["NAV-POSLLH", "NAV-SOL", "NAV-VELNED"]), (UBLOX7, ["NAV-PVT"])],
)
def test_ubx_nav_output_adapts_to_the_receiver(version: tuple, nav: list[str]) -> None:
    cfg = UbxConfigurator(baud=9600, current_baud=9600, ubx_nav=True)
    log = run_happy_path(cfg, mon_ver(*version))
    names = {v: k for k, v in NAV_MSG_IDS.items()}
    assert [names[m.msgID] for m in log if m.identity == "CFG-MSG" and m.msgClass == 0x01] == nav
    assert all(m.rate == 1 for m in log if m.identity == "CFG-MSG" and m.msgClass == 0x01)


def start_until(cfg: UbxConfigurator, identity: str) -> bytes:
    """Answer until `cfg` sends `identity` (after the port poll); returns those bytes."""
    cfg.start(0.0)
    cfg.receive(mon_ver(*NEO6M), 0.0)
    out = cfg.receive(prt_answer(cfg.current_baud), 0.0)
    while sent(out).identity != identity:
        out = cfg.receive(ack(0x06, sent(out).msg_id[0]), 0.0)
    return out


def test_nak_is_surfaced_by_name() -> None:
    cfg = UbxConfigurator(baud=9600, current_baud=9600)
    start_until(cfg, "CFG-NAV5")
    assert cfg.receive(ack(0x06, 0x08, ok=False), 0.1) == b""  # NAK of another message
    assert not cfg.finished
    cfg.receive(ack(0x06, 0x24, ok=False), 0.1)
    assert cfg.finished
    with pytest.raises(UbxNak, match=r"CFG-NAV5 \(dynModel 7\) rejected.*class 0x06 id 0x24"):
        cfg.result()


def test_timeout_resends_then_fails() -> None:
    cfg = UbxConfigurator(baud=9600, current_baud=9600, timeout=0.5, retries=2)
    first = start_until(cfg, "CFG-RATE")
    assert cfg.deadline == 0.5
    assert cfg.tick(0.4) == b""
    assert cfg.tick(0.5) == first
    assert cfg.tick(1.0) == first
    assert not cfg.finished
    assert cfg.tick(1.5) == b""
    with pytest.raises(UbxTimeout, match=r"CFG-RATE \(measRate 200 ms\): no answer after 3 tries"):
        cfg.result()


def test_late_ack_after_a_resend_still_counts() -> None:
    cfg = UbxConfigurator(baud=9600, current_baud=9600, timeout=0.5)
    start_until(cfg, "CFG-RATE")
    cfg.tick(0.5)
    nxt = cfg.receive(ack(0x06, 0x08), 0.6)
    assert sent(nxt).identity == "CFG-NAV5"


def test_no_mon_ver_names_the_likely_cause() -> None:
    cfg = UbxConfigurator(timeout=1.0, retries=0)
    cfg.start(0.0)
    cfg.tick(1.0)
    with pytest.raises(UbxTimeout, match=r"MON-VER poll: no answer.*not a u-blox receiver"):
        cfg.result()


def test_lost_baud_change_ack_is_settled_at_the_new_rate() -> None:
    cfg = UbxConfigurator(baud=38400, current_baud=9600, timeout=1.0)
    start_until(cfg, "CFG-PRT")
    assert cfg.tick(1.0) == b""  # ACK lost in the switch: not re-sent, switch anyway
    assert cfg.pending_baud == 38400
    cfg.baud_changed(1.1)
    assert sent(cfg.receive(prt_answer(38400), 1.2)).identity == "CFG-RATE"
    assert cfg.current_baud == 38400


def test_late_nak_of_the_baud_change_still_fails_it() -> None:
    cfg = UbxConfigurator(baud=38400, current_baud=9600, timeout=1.0)
    start_until(cfg, "CFG-PRT")
    cfg.tick(1.0)
    assert cfg.pending_baud == 38400
    cfg.receive(ack(0x06, 0x00), 1.05)  # late ACK: noted, still waiting on the transport
    assert cfg.pending_baud == 38400 and not cfg.finished
    cfg.receive(ack(0x06, 0x00, ok=False), 1.1)
    assert cfg.finished and cfg.pending_baud is None
    with pytest.raises(UbxNak, match="CFG-PRT"):
        cfg.result()


def test_an_ack_that_arrives_at_the_new_rate_proves_the_switch() -> None:
    """A receiver that switches first and acknowledges at the new rate: its ACK-ACK, fed
    after the transport switched, is decoded at the new rate, which is the proof."""
    cfg = UbxConfigurator(baud=115200, current_baud=9600, timeout=1.0)
    start_until(cfg, "CFG-PRT")
    assert cfg.tick(1.0) == b""  # nothing at 9600
    cfg.baud_changed(1.0)
    assert cfg.receive(ack(0x06, 0x08), 1.1) == b""  # an ACK of something else is not
    assert sent(cfg.receive(ack(0x06, 0x00), 1.1)).identity == "CFG-RATE"
    assert cfg.current_baud == 115200
    assert cfg.receive(prt_answer(115200), 1.2) == b""  # the poll's answer after it: ignored
    assert sent(cfg.receive(ack(0x06, 0x08), 1.3)).identity == "CFG-NAV5"


def test_a_nak_at_the_new_rate_fails_the_switch() -> None:
    cfg = UbxConfigurator(baud=115200, current_baud=9600, timeout=1.0)
    start_until(cfg, "CFG-PRT")
    cfg.tick(1.0)
    cfg.baud_changed(1.0)
    cfg.receive(ack(0x06, 0x00, ok=False), 1.1)
    with pytest.raises(UbxNak, match="CFG-PRT"):
        cfg.result()


def test_silence_at_the_new_rate_after_an_ack_blames_the_line() -> None:
    cfg = UbxConfigurator(baud=115200, current_baud=9600, timeout=1.0, retries=1)
    start_until(cfg, "CFG-PRT")
    cfg.receive(ack(0x06, 0x00), 0.1)  # acknowledged at 9600: the receiver did switch
    poll = cfg.baud_changed(0.2)
    assert cfg.receive(prt_answer(9600), 0.3) == b""  # a port at another rate is no proof
    assert cfg.tick(1.2) == poll
    cfg.tick(2.2)
    with pytest.raises(UbxBaudError) as caught:
        cfg.result()
    message = str(caught.value)
    assert "acknowledged the switch to 115200 baud at 9600" in message
    assert "2 polls at 115200 baud" in message and "may not run at 115200" in message
    assert "still" not in message  # it is not at 9600 any more: it said so


def test_silence_at_both_rates_says_either_may_hold() -> None:
    cfg = UbxConfigurator(baud=115200, current_baud=9600, timeout=1.0, retries=0)
    start_until(cfg, "CFG-PRT")
    cfg.tick(1.0)  # no ACK at 9600
    cfg.baud_changed(1.0)
    cfg.tick(2.0)
    with pytest.raises(UbxBaudError) as caught:
        cfg.result()
    message = str(caught.value)
    assert "no acknowledgement at 9600 baud and no answer at 115200" in message
    assert "stayed at 9600" in message


def test_a_usb_wired_receiver_keeps_its_rate_and_gets_rates_on_its_own_port() -> None:
    cfg = UbxConfigurator(baud=115200, current_baud=9600, save=True, eeprom=True)
    log = run_happy_path(cfg, mon_ver(*NEO6M), port=3)
    assert "CFG-PRT" not in [m.identity for m in log]  # no line rate to set on USB
    assert cfg.pending_baud is None
    msgs = [m for m in log if m.identity == "CFG-MSG"]
    assert len(msgs) == 6 and all(isinstance(m, CfgMsgRate) for m in msgs)
    assert (log[-1].devBBR, log[-1].devFlash, log[-1].devEEPROM) == (1, 0, 1)
    result = cfg.result()
    assert (result.port, result.baud, result.saved_to) == ("USB", 9600, ("BBR", "EEPROM"))
    assert result.describe().endswith("on USB, 5 Hz; saved to BBR and EEPROM")


def test_a_receiver_that_naks_the_port_poll_is_taken_to_be_on_uart1() -> None:
    cfg = UbxConfigurator(baud=38400, current_baud=9600)
    cfg.start(0.0)
    cfg.receive(mon_ver(*NEO6M), 0.0)
    out = cfg.receive(ack(0x06, 0x00, ok=False), 0.1)
    assert sent(out).identity == "CFG-PRT" and sent(out).baudRate == 38400
    assert cfg.port == "UART1"


def test_cfg_msg_is_the_manuals_three_byte_form_byte_for_byte() -> None:
    """GLL off as MultiWii's u-blox set-up string has it (the multiwii.com forum, "UBLOX_INIT":
    B5 62 06 01 03 00 F0 01 00 FB 11), an independent encoding of the same rule."""
    cfg = UbxConfigurator(baud=9600, current_baud=9600, nmea_on=(), nmea_off=("GLL",))
    assert start_until(cfg, "CFG-MSG") == bytes.fromhex("b562060103 00f00100fb11")


def test_unsaved_configuration_says_so() -> None:
    cfg = UbxConfigurator(baud=9600, current_baud=9600)
    run_happy_path(cfg, mon_ver(*NEO6M))
    result = cfg.result()
    assert result.saved_to == () and "not saved" in result.describe()


def test_prt_nak_is_surfaced() -> None:
    cfg = UbxConfigurator(baud=115200, current_baud=9600)
    start_until(cfg, "CFG-PRT")
    cfg.receive(ack(0x06, 0x00, ok=False), 0.1)
    with pytest.raises(UbxNak, match="CFG-PRT"):
        cfg.result()


def test_result_before_the_end_is_a_usage_error() -> None:
    with pytest.raises(RuntimeError):
        UbxConfigurator().result()


@pytest.mark.parametrize(
    "kwargs", [{"dyn_model": 1}, {"meas_rate_ms": 100}, {"nmea_on": ("XYZ",)}, {"timeout": 0}]
)
def test_bad_settings_are_refused_up_front(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        UbxConfigurator(**kwargs)


# -- MON-VER ------------------------------------------------------------------------------


def test_mon_ver_of_a_genuine_neo6m() -> None:
    version = parse_mon_ver(mon_ver(*NEO6M))
    assert version == ReceiverVersion("7.03 (45969)", "00040007", ())
    assert version.generation == "u-blox 6"
    assert version.protocol_version == pytest.approx(13.03)
    assert not version.has_nav_pvt


def test_mon_ver_of_a_ublox7_sold_as_neo6m() -> None:
    version = parse_mon_ver(mon_ver(*UBLOX7))
    assert version.extensions == ("PROTVER 14.00", "GPS;SBAS;GLO;QZSS")
    assert version.generation == "u-blox 7"
    assert version.protocol_version == 14.0
    assert version.has_nav_pvt


def test_mon_ver_of_an_m8_and_of_an_unknown_part() -> None:
    m8 = parse_mon_ver(
        mon_ver("ROM CORE 3.01 (107888)", "00080000", "FWVER=SPG 3.01", "PROTVER=18.00")
    )
    assert (m8.generation, m8.protocol_version, m8.has_nav_pvt) == ("u-blox M8", 18.0, True)
    odd = parse_mon_ver(mon_ver("banana", "1234"))
    assert odd.generation == "unknown (hw 1234)"
    assert odd.protocol_version is None and not odd.has_nav_pvt


# -- baud detection -----------------------------------------------------------------------

NMEA = (
    b"$GPRMC,120000.00,A,4717.10000,N,00833.90000,E,19.438,90.00,010626,,,A*65\r\n"
    b"$GPGGA,120000.00,4717.10000,N,00833.90000,E,1,08,0.92,500.0,M,47.0,M,,*5F\r\n"
    b"$GPGSA,A,3,02,05,12,13,15,21,24,25,,,,,1.65,0.92,1.37*0E\r\n"
)


def garbage(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(n))


def test_detect_baud_picks_the_rate_with_valid_sentences() -> None:
    samples = {rate: garbage(400, rate) for rate in (9600, 19200, 38400, 57600, 115200)}
    samples[38400] = garbage(17, 1) + NMEA + garbage(5, 2)
    assert detect_baud(samples) == 38400
    best = score_baud_samples(samples)[0]
    assert (best.baud, best.nmea, best.ubx) == (38400, 3, 0)


def test_detect_baud_counts_ubx_frames_and_rejects_bad_checksums() -> None:
    ack_frame = frame(0x05, 0x01, b"\x06\x00")
    samples = {
        9600: NMEA.replace(b"*65", b"*66").replace(b"*5F", b"*00").replace(b"*0E", b"*0F"),
        115200: garbage(10, 3) + ack_frame * 2 + garbage(10, 4),
    }
    assert detect_baud(samples) == 115200
    assert score_baud_samples(samples)[1].nmea == 0


def test_detect_baud_gives_none_without_a_receiver() -> None:
    assert detect_baud({rate: garbage(300, rate) for rate in (9600, 115200)}) is None
    assert detect_baud({}) is None
    assert detect_baud({9600: NMEA[:80]}) is None  # one sentence is not enough by default


def test_candidate_order_tries_the_last_known_rate_first() -> None:
    assert candidate_bauds(57600) == [57600, 9600, 19200, 38400, 115200]
    assert candidate_bauds() == [9600, 19200, 38400, 57600, 115200]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_detect_baud_never_raises(chunks: list[bytes]) -> None:
    samples = {9600 * (i + 1): chunk for i, chunk in enumerate(chunks)}
    rate = detect_baud(samples, min_frames=1)
    assert rate is None or rate in samples


# -- arbitrary replies --------------------------------------------------------------------

_IDS = [(0x05, 0x01), (0x05, 0x00), (0x0A, 0x04), (0x06, 0x00), (0x06, 0x08), (0x01, 0x07)]


@st.composite
def replies(draw) -> UBXMessage | None:
    """A parsed UBX message: ACKs of random (often matching) ids, MON-VER with odd strings,
    CFG-PRT answers, or a random frame; None where pyubx2 refuses the bytes."""
    cls, msg_id = draw(st.sampled_from(_IDS) | st.tuples(st.integers(0, 255), st.integers(0, 255)))
    if cls == 0x05:
        payload = bytes((0x06, draw(st.sampled_from([0x00, 0x01, 0x08, 0x09, 0x24, 0x99]))))
    else:
        payload = draw(st.binary(max_size=100))
    try:
        return UBXReader.parse(frame(cls, msg_id, payload))
    except (UBXParseError, UBXMessageError, UBXTypeError, ValueError, KeyError, IndexError):
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(replies(), st.floats(0, 3), st.booleans()), max_size=40),
    st.sampled_from([9600, 115200]),
)
def test_arbitrary_replies_end_only_in_documented_errors(steps, baud) -> None:
    cfg = UbxConfigurator(baud=baud, current_baud=9600, timeout=1.0, retries=1)
    now = 0.0
    cfg.start(now)
    for msg, dt, switch in steps:
        now += dt
        if msg is not None:
            assert isinstance(cfg.receive(msg, now), bytes)
        if switch and cfg.pending_baud is not None:
            cfg.baud_changed(now)
        assert isinstance(cfg.tick(now), bytes)
    if cfg.finished:
        try:
            result = cfg.result()
        except UbxConfigError:
            pass
        else:
            assert result.version is not None
    else:
        assert cfg.deadline is not None or cfg.pending_baud is not None


def test_every_nmea_sentence_name_has_a_cfg_msg_id() -> None:
    assert set(NMEA_MSG_IDS) >= {"GGA", "RMC", "GSA", "GSV", "VTG", "GLL"}
