"""The A7670 emulator: the sans-I/O core fed with bytes (a fake MQTT bridge), and the whole
thing on a real pty, bridged to a real mosquitto, watched by a paho client."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from sim.modem.a7670 import A7670, Signal
from sim.modem.at_command import Arg, AtSyntaxError, parse_line, split_args
from sim.modem.mqtt_bridge import (
    BridgeEvent,
    Connected,
    ConnectionLost,
    ConnectRequest,
    Disconnected,
    Message,
    PahoBridge,
    Published,
    Subscribed,
)
from sim.modem.pty_runner import A7670Pty
from sim.modem.sms_store import SmsStoreFull

STEP = 0.01
FINAL = re.compile(rb"\r\n(OK|ERROR|\+CME ERROR: [^\r]*|\+CMS ERROR: [^\r]*)\r\n")


class FakeBridge:
    """Records what the module asked of the network; the test plays the broker."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.pending: list[BridgeEvent] = []

    def connect(self, client: int, request: ConnectRequest) -> None:
        self.calls.append(("connect", client, request))

    def publish(self, client: int, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.calls.append(("publish", client, topic, payload, qos, retain))

    def subscribe(self, client: int, topics: list[tuple[str, int]]) -> None:
        self.calls.append(("subscribe", client, topics))

    def unsubscribe(self, client: int, topics: list[str]) -> None:
        self.calls.append(("unsubscribe", client, topics))

    def disconnect(self, client: int, *, graceful: bool) -> None:
        self.calls.append(("disconnect", client, graceful))

    def events(self) -> list[BridgeEvent]:
        out, self.pending = self.pending, []
        return out


class Host:
    """Drives a module in simulated time and keeps everything it said."""

    def __init__(self, modem: A7670) -> None:
        self.modem = modem
        self.now = 0.0
        self.seen = bytearray()
        self.mark = 0

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += STEP
            self.seen += self.modem.output(self.now)

    def write(self, data: bytes) -> None:
        self.modem.receive(data, self.now)

    def until(self, pattern: bytes, within: float = 30.0) -> bytes:
        """Run until `pattern` shows up after the mark; returns the text since the mark."""
        end = self.now + within
        while pattern not in self.seen[self.mark :]:
            assert self.now < end, f"no {pattern!r} in {bytes(self.seen[self.mark :])!r}"
            self.run(STEP)
        return bytes(self.seen[self.mark :])

    def cmd(self, line: str) -> bytes:
        """Send a command; returns everything it said up to its final result code."""
        self.mark = len(self.seen)
        self.write(line.encode() + b"\r")
        return self.final()

    def prompt_cmd(self, line: str, data: bytes, prompt: bytes = b"\r\n>") -> bytes:
        """A command with a data prompt: waits for it, sends `data`, waits for the final code."""
        self.mark = len(self.seen)
        self.write(line.encode() + b"\r")
        self.until(prompt)
        self.write(data)
        return self.final()

    def final(self, within: float = 30.0) -> bytes:
        end = self.now + within
        while not FINAL.search(self.tail()):
            assert self.now < end, f"no final result code in {self.tail()!r}"
            self.run(STEP)
        return self.tail()

    def tail(self) -> bytes:
        return bytes(self.seen[self.mark :])


def booted(**kwargs) -> Host:  # type: ignore[no-untyped-def]
    kwargs.setdefault("bridge", FakeBridge())
    host = Host(A7670(**kwargs))
    host.until(b"*ATREADY: 1")
    host.cmd("ATE0")
    return host


def registered(**kwargs) -> Host:  # type: ignore[no-untyped-def]
    host = booted(**kwargs)
    host.until(b"SMS DONE")
    host.until(b"PB DONE")
    host.until(b"+CGEV: EPS PDN ACT 1")
    return host


def mqtt_connected(host: Host) -> FakeBridge:
    bridge = host.modem.bridge
    assert isinstance(bridge, FakeBridge)
    host.cmd("AT+CMQTTSTART")
    host.until(b"+CMQTTSTART: 0")
    assert b"\r\nOK\r\n" in host.cmd('AT+CMQTTACCQ=0,"drone-1"')
    host.cmd('AT+CMQTTCONNECT=0,"tcp://broker.example:1883",60,1')
    bridge.pending.append(Connected(0, 0))
    host.until(b"+CMQTTCONNECT: 0,0")
    return bridge


# -- command line parsing --


def test_parse_line_forms() -> None:
    assert parse_line("AT").name == ""
    assert parse_line("at+csq").name == "+CSQ"
    assert parse_line("AT+CPIN?").form == "read"
    assert parse_line("AT+CMEE=?").form == "test"
    echo = parse_line("ATE0")
    assert (echo.name, echo.basic_value) == ("E", "0")
    cmd = parse_line('AT+CGDCONT=1,"IP","a,b"')
    assert cmd.form == "write"
    assert cmd.args == (Arg("1", False), Arg("IP", True), Arg("a,b", True))
    assert split_args("0,,1,") == (Arg("0", False), None, Arg("1", False), None)
    for bad in ("XT", 'AT+X="open', 'AT+X=1"2', 'AT+X="a"b', "AT" + "A" * 4000):
        with pytest.raises(AtSyntaxError):
            parse_line(bad)


# -- boot, echo, framing --


def test_boot_ignores_at_then_reports_ready() -> None:
    host = Host(A7670(boot_s=3.0, seed=3))
    host.write(b"AT\r")
    host.run(1.0)
    assert host.seen == b""  # nothing read, nothing said while booting
    text = host.until(b"SMS DONE", within=20)
    assert text.startswith(b"\r\n*ATREADY: 1\r\n")
    for urc in (b"+CPIN: READY", b"PB DONE"):
        host.until(urc)
    assert host.cmd("AT") == b"AT\r\r\nOK\r\n"  # echo on after boot


def test_boot_urc_order_varies_with_seed() -> None:
    orders = set()
    for seed in range(12):
        host = Host(A7670(seed=seed, boot_s=0.5, register_s=1.0))
        host.run(6.0)
        lines = [line for line in bytes(host.seen).split(b"\r\n") if line]
        assert lines[0] == b"*ATREADY: 1"
        assert set(lines) == {
            b"*ATREADY: 1",
            b"+CPIN: READY",
            b"SMS DONE",
            b"PB DONE",
            b"+CGEV: EPS PDN ACT 1",
        }
        orders.add(tuple(lines))
    assert len(orders) > 1


def test_echo_off_unknown_command_and_garbage() -> None:
    host = registered()
    assert host.cmd("AT") == b"\r\nOK\r\n"
    assert host.cmd("AT+NOSUCHTHING") == b"\r\nERROR\r\n"
    host.mark = len(host.seen)
    host.write(b"hello\r")
    host.run(0.5)
    assert host.tail() == b""  # no AT prefix: ignored, like the module
    assert host.cmd("ATE1") == b"\r\nOK\r\n"
    assert host.cmd("AT+CSQ=?").startswith(b"AT+CSQ=?\r\r\n+CSQ: (0-31,99),(0-7,99)")


def test_simcomati_and_ati() -> None:
    host = booted()
    text = host.cmd("AT+SIMCOMATI")
    assert b"Model: A7670G-LLSE\r\nRevision: A124B01A7670M7\r\nA7670M7_B01V01_240722" in text
    assert re.search(rb"IMEI: \d{15}\r\n\r\nOK", text)


# -- SIM --


def test_cpin_before_sim_answers_is_sim_failure() -> None:
    host = Host(A7670(boot_s=1.0, seed=0))
    host.until(b"*ATREADY: 1")
    assert host.cmd("AT+CPIN?").endswith(b"\r\n+CME ERROR: 13\r\n")
    host.until(b"+CPIN: READY")
    assert b"+CPIN: READY\r\n\r\nOK" in host.cmd("AT+CPIN?")


def test_pin_entry_wrong_then_right() -> None:
    host = booted(pin="1234")
    host.until(b"+CPIN: SIM PIN")
    assert b"+CPIN: SIM PIN" in host.cmd("AT+CPIN?")
    assert host.cmd('AT+CPIN="0000"') == b"\r\n+CME ERROR: 16\r\n"
    host.cmd("AT+CMEE=2")
    assert host.cmd('AT+CPIN="0000"') == b"\r\n+CME ERROR: incorrect password\r\n"
    assert host.cmd("AT+CSQ") == b"\r\n+CSQ: 99,99\r\n\r\nOK\r\n"
    assert host.cmd('AT+CPIN="1234"') == b"\r\nOK\r\n"
    host.until(b"+CPIN: READY")
    host.until(b"+CGEV: EPS PDN ACT 1")
    assert host.cmd("AT+CSQ") == b"\r\n+CSQ: 27,99\r\n\r\nOK\r\n"


def test_three_wrong_pins_lock_to_puk() -> None:
    host = booted(pin="1234", puk="87654321")
    host.until(b"+CPIN: SIM PIN")
    for _ in range(3):
        assert host.cmd('AT+CPIN="9999"') == b"\r\n+CME ERROR: 16\r\n"
    assert b"+CPIN: SIM PUK" in host.cmd("AT+CPIN?")
    assert host.cmd('AT+CPIN="1234"') == b"\r\n+CME ERROR: 16\r\n"  # a PIN is no PUK
    assert host.cmd('AT+CPIN="87654321","4321"') == b"\r\nOK\r\n"
    host.until(b"+CPIN: READY")


@pytest.mark.parametrize(
    ("sim", "cmee", "answer"),
    [
        ("absent", 1, b"+CME ERROR: 10"),
        ("absent", 2, b"+CME ERROR: SIM not inserted"),
        ("failure", 1, b"+CME ERROR: 13"),
        ("failure", 0, b"ERROR"),
    ],
)
def test_sim_states(sim: str, cmee: int, answer: bytes) -> None:
    host = booted(sim=sim)
    host.run(2.0)
    host.cmd(f"AT+CMEE={cmee}")
    assert host.cmd("AT+CPIN?") == b"\r\n" + answer + b"\r\n"
    assert host.cmd("AT+CEREG?") == b"\r\n+CEREG: 0,0\r\n\r\nOK\r\n"


def test_bad_constructor_argument() -> None:
    with pytest.raises(ValueError, match="sim must be"):
        A7670(sim="maybe")


# -- registration and signal --


def test_registration_urcs_and_signal() -> None:
    host = booted(register_s=2.0)
    host.cmd("AT+CEREG=2")
    assert host.cmd("AT+CPSI?") == b"\r\n+CPSI: NO SERVICE,Online\r\n\r\nOK\r\n"
    host.mark = len(host.seen)
    host.until(b'+CEREG: 1,"1A2B","07B0C1D5",7\r\n')
    assert b'+CEREG: 2,1,"1A2B","07B0C1D5",7' in host.cmd("AT+CEREG?")
    assert host.cmd("AT+COPS?") == b'\r\n+COPS: 0,0,"vodafone UK",7\r\n\r\nOK\r\n'
    cpsi = host.cmd("AT+CPSI?")
    assert cpsi.startswith(b"\r\n+CPSI: LTE,Online,234-15,0x1A2B,")
    host.modem.set_signal(Signal(rssi_dbm=-75, rsrp_dbm=-100, rsrq_db=-15.0, sinr_db=-4))
    assert host.cmd("AT+CSQ") == b"\r\n+CSQ: 19,99\r\n\r\nOK\r\n"
    assert b",10,40,35,-4\r\n" in host.cmd("AT+CPSI?")  # RSRQ, RSRP, RSSI, SINR raw values


def test_data_bring_up() -> None:
    host = registered()
    assert b'+CGDCONT: 1,"IP","internet"' in (
        host.cmd('AT+CGDCONT=1,"IP","internet"') + host.cmd("AT+CGDCONT?")
    )
    assert host.cmd("AT+IPADDR") == b"\r\n+IPERROR: Network not opened\r\n\r\nERROR\r\n"
    assert host.cmd("AT+NETOPEN") == b"\r\nOK\r\n"
    host.until(b"+NETOPEN: 0")
    assert re.fullmatch(rb"\r\n\+IPADDR: 10\.\d+\.\d+\.17\r\n\r\nOK\r\n", host.cmd("AT+IPADDR"))
    assert b"+IPERROR: Network is already opened\r\n\r\nERROR" in host.cmd("AT+NETOPEN")
    assert host.cmd("AT+NETCLOSE") == b"\r\nOK\r\n"
    host.until(b"+NETCLOSE: 0")


def test_refused_apn() -> None:
    host = registered(apns={"internet"})
    host.cmd('AT+CGDCONT=1,"IP","wrong.apn"')
    host.cmd("AT+NETOPEN")
    host.until(b"+NETOPEN: 1")
    assert host.cmd("AT+CGACT=1,1") == b"\r\n+CME ERROR: 133\r\n"
    host.cmd("AT+CMQTTSTART")
    host.until(b"+CMQTTSTART: 7")
    host.cmd('AT+CGDCONT=1,"IP","internet"')
    assert host.cmd("AT+CGACT=1,1") == b"\r\nOK\r\n"


def test_radio_off_and_on() -> None:
    host = registered(register_s=1.0)
    host.cmd("AT+CEREG=1")
    mqtt_connected(host)
    text = host.cmd("AT+CFUN=0")
    host.run(0.2)
    assert b"+CEREG: 0\r\n" in host.tail() and b"+CMQTTCONNLOST: 0,3" in host.tail()
    assert text.count(b"OK") == 1
    assert host.cmd("AT+CPSI?") == b"\r\n+CPSI: NO SERVICE,Low Power Mode\r\n\r\nOK\r\n"
    assert host.cmd("AT+CFUN?") == b"\r\n+CFUN: 0\r\n\r\nOK\r\n"
    host.cmd("AT+CFUN=1")
    host.until(b"+CEREG: 1\r\n")


# -- MQTT --


def test_mqtt_full_cycle() -> None:
    host = registered()
    bridge = host.modem.bridge
    assert isinstance(bridge, FakeBridge)
    assert host.cmd('AT+CMQTTACCQ=0,"x"') == b"\r\nERROR\r\n"  # service not started
    assert host.cmd("AT+CMQTTSTART") == b"\r\nOK\r\n"
    host.until(b"+CMQTTSTART: 0")
    assert host.cmd("AT+CMQTTSTART") == b"\r\nERROR\r\n"
    assert host.cmd("AT+CMQTTREL=0") == b"\r\n+CMQTTREL: 0,20\r\n\r\nERROR\r\n"
    assert host.cmd('AT+CMQTTACCQ=0,"drone-7"') == b"\r\nOK\r\n"
    assert host.cmd('AT+CMQTTCFG="version",0,4') == b"\r\nOK\r\n"
    assert host.prompt_cmd("AT+CMQTTWILLTOPIC=0,6", b"status") == b"\r\n>\r\nOK\r\n"
    assert host.prompt_cmd("AT+CMQTTWILLMSG=0,7,1", b"offline").endswith(b"\r\nOK\r\n")
    assert host.cmd('AT+CMQTTCONNECT=0,"tcp://broker.example:8883",30,1') == b"\r\nOK\r\n"
    _, index, request = bridge.calls[-1]
    assert index == 0
    assert request == ConnectRequest(
        client_id="drone-7",
        host="broker.example",
        port=8883,
        keepalive_s=30,
        clean_session=True,
        mqtt_version=4,
        will_topic="status",
        will_payload=b"offline",
        will_qos=1,
    )
    bridge.pending.append(Connected(0, 0))
    host.until(b"\r\n+CMQTTCONNECT: 0,0\r\n")
    assert b"+CMQTTDISC: 0,0\r\n+CMQTTDISC: 1,1" in host.cmd("AT+CMQTTDISC?")

    payload = b'{"seq":1}\r\nline two\x00'
    host.prompt_cmd("AT+CMQTTTOPIC=0,9", b"telemetry")
    host.prompt_cmd(f"AT+CMQTTPAYLOAD=0,{len(payload)}", payload)
    assert host.cmd("AT+CMQTTPUB=0,1,60") == b"\r\nOK\r\n"
    assert bridge.calls[-1] == ("publish", 0, "telemetry", payload, 1, False)
    bridge.pending.append(Published(0, 0))
    host.until(b"+CMQTTPUB: 0,0\r\n")
    assert host.cmd("AT+CMQTTPUB=0,1,60") == b"\r\n+CMQTTPUB: 0,18\r\n\r\nERROR\r\n"  # cleared

    host.mark = len(host.seen)
    host.write(b"AT+CMQTTSUB=0,3,1\r")
    host.until(b"\r\n>")
    host.write(b"cmd")
    host.until(b"\r\nOK\r\n")
    assert bridge.calls[-1] == ("subscribe", 0, [("cmd", 1)])
    bridge.pending.append(Subscribed(0, 0))
    host.until(b"+CMQTTSUB: 0,0\r\n")

    big = (bytes(range(256)) * 8)[:2039]  # CR, LF, NUL and all: read by length
    host.mark = len(host.seen)
    bridge.pending.append(Message(0, "cmd", big))
    host.until(b"+CMQTTRXEND: 0\r\n")
    expected = (
        b"\r\n+CMQTTRXSTART: 0,3,2039\r\n+CMQTTRXTOPIC: 0,3\r\ncmd\r\n"
        b"+CMQTTRXPAYLOAD: 0,1500\r\n" + big[:1500] + b"\r\n"
        b"+CMQTTRXPAYLOAD: 0,539\r\n" + big[1500:] + b"\r\n+CMQTTRXEND: 0\r\n"
    )
    assert host.tail() == expected

    assert host.cmd("AT+CMQTTDISC=0,60") == b"\r\nOK\r\n"
    assert bridge.calls[-1] == ("disconnect", 0, True)
    bridge.pending.append(Disconnected(0, 0))
    host.until(b"+CMQTTDISC: 0,0\r\n")
    assert host.cmd("AT+CMQTTSTOP") == b"\r\n+CMQTTSTOP: 21\r\n\r\nERROR\r\n"  # not released
    assert host.cmd("AT+CMQTTREL=0") == b"\r\nOK\r\n"
    assert host.cmd("AT+CMQTTSTOP") == b"\r\nOK\r\n"
    host.until(b"+CMQTTSTOP: 0")


def test_mqtt_empty_payload_message_has_no_payload_urc() -> None:
    host = registered()
    bridge = mqtt_connected(host)
    host.mark = len(host.seen)
    bridge.pending.append(Message(0, "simcommsg", b""))
    host.until(b"+CMQTTRXEND: 0\r\n")
    assert host.tail() == (
        b"\r\n+CMQTTRXSTART: 0,9,0\r\n+CMQTTRXTOPIC: 0,9\r\nsimcommsg\r\n+CMQTTRXEND: 0\r\n"
    )


def test_mqtt_errors() -> None:
    host = registered()
    bridge = host.modem.bridge
    assert isinstance(bridge, FakeBridge)
    host.cmd("AT+CMQTTSTART")
    host.until(b"+CMQTTSTART: 0")
    host.cmd('AT+CMQTTACCQ=0,"d"')
    assert host.cmd('AT+CMQTTACCQ=0,"d"') == b"\r\n+CMQTTACCQ: 0,19\r\n\r\nERROR\r\n"
    assert host.cmd("AT+CMQTTPUB=0,1,60") == b"\r\n+CMQTTPUB: 0,11\r\n\r\nERROR\r\n"
    assert host.cmd("AT+CMQTTTOPIC=0,0") == b"\r\n+CMQTTTOPIC: 0,22\r\n\r\nERROR\r\n"
    assert host.cmd("AT+CMQTTTOPIC=1,3") == b"\r\n+CMQTTTOPIC: 1,20\r\n\r\nERROR\r\n"
    assert host.cmd('AT+CMQTTCONNECT=0,"mqtt://x:1",60,1') == b"\r\nERROR\r\n"
    host.cmd('AT+CMQTTCONNECT=0,"tcp://x:1883",60,1')
    bridge.pending.append(Connected(0, 30))  # bad user name or password
    host.until(b"+CMQTTCONNECT: 0,30\r\n")
    assert b"+CMQTTDISC: 0,1" in host.cmd("AT+CMQTTDISC?")


def test_publish_times_out_without_puback() -> None:
    host = registered()
    mqtt_connected(host)
    host.prompt_cmd("AT+CMQTTTOPIC=0,1", b"t")
    host.cmd("AT+CMQTTPUB=0,1,5")
    host.mark = len(host.seen)
    host.until(b"+CMQTTPUB: 0,17\r\n", within=10)


# -- SMS --


def test_sms_receive_read_list_delete() -> None:
    host = registered()
    host.cmd("AT+CMGF=1")
    assert host.cmd("AT+CNMI=2,1,0,0,0") == b"\r\nOK\r\n"
    assert host.cmd("AT+CNMI=2,2,0,1,0") == b"\r\nERROR\r\n"  # ds=1 needs mode 1 [ISS#10]
    host.mark = len(host.seen)
    index = host.modem.deliver_sms("+447700900123", "DELIVER 42")
    host.until(f'\r\n+CMTI: "SM",{index}\r\n'.encode())
    first = host.cmd(f"AT+CMGR={index}")
    assert re.fullmatch(
        rb'\r\n\+CMGR: "REC UNREAD","\+447700900123",,"\d\d/\d\d/\d\d,\d\d:\d\d:\d\d\+00"'
        rb"\r\nDELIVER 42\r\n\r\nOK\r\n",
        first,
    )
    assert b'"REC READ"' in host.cmd(f"AT+CMGR={index}")
    host.modem.deliver_sms("+447700900124", "second")
    listing = host.cmd('AT+CMGL="ALL"')
    assert listing.count(b"+CMGL: ") == 2 and b"second" in listing
    assert host.cmd(f"AT+CMGD={index}") == b"\r\nOK\r\n"
    assert host.cmd(f"AT+CMGR={index}") == b"\r\n+CMS ERROR: 321\r\n"


def test_sms_send_and_cancel() -> None:
    host = registered()
    assert host.cmd('AT+CMGS="+447700900999"') == b"\r\n+CMS ERROR: 304\r\n"  # PDU mode
    host.cmd("AT+CMGF=1")
    text = host.prompt_cmd('AT+CMGS="+447700900999"', b"DELIVERED #17\x1a", prompt=b"\r\n> ")
    assert re.search(rb"\r\n\+CMGS: \d+\r\n\r\nOK\r\n$", text)
    assert host.modem.sent_sms == [("+447700900999", "DELIVERED #17")]
    assert host.prompt_cmd('AT+CMGS="+447700900999"', b"oops\x1b", prompt=b"> ").endswith(b"OK\r\n")
    assert len(host.modem.sent_sms) == 1
    host.modem.set_coverage(False)
    text = host.prompt_cmd('AT+CMGS="+447700900999"', b"help\x1a", prompt=b"> ")
    assert text.endswith(b"\r\n+CMS ERROR: 331\r\n")


# SMS-DELIVER PDUs of the emulated network, each decoded by an independent implementation
# (python-gsmmodem-new 0.13.0, `gsmmodem.pdu.decodeSmsPdu`) to the sender and text beside it;
# received 25/04/27 13:44:52 UTC.
WHEN = datetime(2025, 4, 27, 13, 44, 52, tzinfo=timezone.utc)
HOSTILE = "Line one\nOK\r\n+CMQTTRXSTART: 0,1,1\r\nERROR"
HOSTILE_PDU = (
    "0791447758100650040C9144770009103200005240723144250028CCB4BB0C7ABBCB8AE7B2A1580D9B512A558A"
    "9D528352AA0E0463C558B186A228953EA5"
)
UCS2_PDU = (
    "0791447758100650040C91447700091032000852407231442500140047007200FC00DF006500202713002003A9"
    "03A3"
)  # "Grüße ✓ ΩΣ"
PART2_PDU = (
    "0791447758100650440C9144770009103200005240723144250018050003090202F0783C1E8FC7E3F1783C1E8F"
    "C7E3F1"
)  # part 2 of 2 (reference 9) of "x" * 170: 17 x
ALPHANUMERIC_PDU = "07914477581006500407D0C2A0730900005240723144250002E834"  # from "BANK": "hi"
# SMS-SUBMIT PDUs made by the same independent implementation (encodeSmsSubmitPdu).
SUBMIT_HELLO = (18, "0001070C91447700091032000005E8329BFD06")


def test_sms_pdu_mode_is_the_default_and_prints_what_the_network_sent() -> None:
    host = registered()
    host.mark = len(host.seen)
    host.modem._concat_ref = 8  # the next message uses reference 9, as the vectors do
    index = host.modem.deliver_sms("+447700900123", HOSTILE, WHEN)
    host.until(f'\r\n+CMTI: "SM",{index}\r\n'.encode())
    assert (
        host.cmd(f"AT+CMGR={index}")
        == f'\r\n+CMGR: 0,"",54\r\n{HOSTILE_PDU}\r\n\r\nOK\r\n'.encode()
    )
    assert host.cmd(f"AT+CMGR={index}").startswith(b'\r\n+CMGR: 1,"",54')  # now read
    host.modem.deliver_sms("+447700900123", "Grüße ✓ ΩΣ", WHEN)
    host.modem._concat_ref = 8  # the next message uses reference 9, as the vectors do
    first = host.modem.deliver_sms("+447700900123", "x" * 170, WHEN)
    host.modem.deliver_sms("BANK", "hi", WHEN)
    listing = host.cmd("AT+CMGL=4")
    assert f'+CMGL: 2,0,"",39\r\n{UCS2_PDU}'.encode() in listing
    assert f'+CMGL: {first + 1},0,"",40\r\n{PART2_PDU}'.encode() in listing
    assert f"{ALPHANUMERIC_PDU}".encode() in listing
    assert host.cmd("AT+CMGD=,4") == b"\r\nOK\r\n"
    assert host.cmd("AT+CMGL=4") == b"\r\nOK\r\n"


def test_sms_text_mode_with_csdh_prints_the_body_raw_with_its_length() -> None:
    """Text mode prints a body as it is: a hostile one's lines reach the host unescaped,
    framed only by the <length> AT+CSDH=1 adds (§9.2.12)."""
    host = registered()
    host.cmd("AT+CMGF=1")
    assert host.cmd("AT+CSDH=1") == b"\r\nOK\r\n"
    index = host.modem.deliver_sms("+447700900123", HOSTILE, WHEN)
    host.until(f'+CMTI: "SM",{index}\r\n'.encode())
    host.mark = len(host.seen)
    host.write(f"AT+CMGR={index}\r".encode())
    host.run(1.0)
    header = (
        '+CMGR: "REC UNREAD","+447700900123",,"25/04/27,13:44:52+00",145,4,0,0,'
        f'"+447785016005",145,{len(HOSTILE)}'
    )
    assert host.tail() == f"\r\n{header}\r\n{HOSTILE}\r\n\r\nOK\r\n".encode()
    ucs2 = host.modem.deliver_sms("+447700900123", "\u2713", WHEN)
    host.cmd("AT+CSDH=1")
    assert b',145,4,0,8,"+447785016005",145,2\r\n2713\r\n' in host.cmd(f"AT+CMGR={ucs2}")


def test_sms_storage_is_chosen_with_cpms_and_fills_up() -> None:
    host = registered()
    assert host.cmd("AT+CPMS=?") == b'\r\n+CPMS: ("ME","SM"),("ME","SM"),("ME","SM")\r\n\r\nOK\r\n'
    assert host.cmd('AT+CPMS="ME","ME","ME"') == b"\r\n+CPMS: 0,180,0,180,0,180\r\n\r\nOK\r\n"
    host.mark = len(host.seen)
    index = host.modem.deliver_sms("+447700900123", "one", WHEN)
    host.until(f'+CMTI: "ME",{index}'.encode())
    assert b'+CPMS: "ME",1,180,"ME",1,180,"ME",1,180' in host.cmd("AT+CPMS?")
    assert host.cmd('AT+CPMS="XX"') == b"\r\n+CMS ERROR: 302\r\n"
    host.cmd('AT+CPMS="SM","SM","SM"')
    for _ in range(50):
        host.modem.deliver_sms("+447700900123", "fill", WHEN)
    with pytest.raises(SmsStoreFull, match="50/50"):
        host.modem.deliver_sms("+447700900123", "one too many", WHEN)


def test_sms_send_in_pdu_mode() -> None:
    host = registered()
    tpdu, pdu = SUBMIT_HELLO
    text = host.prompt_cmd(f"AT+CMGS={tpdu}", pdu.encode() + b"\x1a", prompt=b"\r\n> ")
    assert re.search(rb"\r\n\+CMGS: \d+\r\n\r\nOK\r\n$", text)
    assert host.modem.sent_sms == [("+447700900123", "hello")]
    bad = host.prompt_cmd(f"AT+CMGS={tpdu + 1}", pdu.encode() + b"\x1a", prompt=b"\r\n> ")
    assert bad.endswith(b"\r\n+CMS ERROR: 304\r\n")


def test_cgdcont_while_active_can_be_refused_as_some_firmware_does() -> None:
    host = registered()
    assert host.cmd('AT+CGDCONT=1,"IP","internet"') == b"\r\nOK\r\n"  # [ISS#1]: accepted
    host.modem.refuse_cgdcont_while_active = True
    assert host.cmd('AT+CGDCONT=1,"IP","internet"') == b"\r\nOK\r\n"  # unchanged: fine
    assert host.cmd('AT+CGDCONT=1,"IP","other"') == b"\r\nERROR\r\n"
    host.cmd("AT+CFUN=0")
    assert host.cmd('AT+CGDCONT=1,"IP","other"') == b"\r\nOK\r\n"


def test_cmgf_survives_reset() -> None:
    host = registered()
    host.cmd("AT+CMGF=1")
    host.cmd("AT+CRESET")
    host.until(b"*ATREADY: 1")
    assert b"+CMGF: 1" in host.cmd("AT+CMGF?")


# -- faults --


def test_coverage_loss_and_return() -> None:
    host = registered(register_s=2.0)
    host.cmd("AT+CEREG=1")
    host.cmd("AT+NETOPEN")
    host.until(b"+NETOPEN: 0")
    bridge = mqtt_connected(host)
    host.mark = len(host.seen)
    host.modem.set_coverage(False)
    host.run(0.1)
    lost = host.tail()
    for urc in (
        b"+CEREG: 2",
        b"+CMQTTCONNLOST: 0,3",
        b"+CIPEVENT: NETWORK CLOSED UNEXPECTEDLY",
        b"+CMQTTNONET",
    ):
        assert b"\r\n" + urc + b"\r\n" in lost
    assert ("disconnect", 0, False) in bridge.calls
    assert host.cmd("AT+CSQ") == b"\r\n+CSQ: 99,99\r\n\r\nOK\r\n"
    assert host.cmd("AT+CMQTTPUB=0,1,60") == b"\r\nERROR\r\n"  # the service is gone
    host.cmd("AT+CMQTTSTART")
    host.until(b"+CMQTTSTART: 7")
    host.modem.set_coverage(True)
    host.until(b"\r\n+CEREG: 1\r\n")
    host.cmd("AT+CMQTTSTART")
    host.until(b"+CMQTTSTART: 0")


def test_drop_mqtt_and_broker_loss() -> None:
    host = registered()
    bridge = mqtt_connected(host)
    host.mark = len(host.seen)
    host.modem.drop_mqtt()
    host.until(b"\r\n+CMQTTCONNLOST: 0,1\r\n")
    host.cmd('AT+CMQTTCONNECT=0,"tcp://broker.example:1883",60,1')
    bridge.pending.append(Connected(0, 0))
    host.until(b"+CMQTTCONNECT: 0,0")
    host.mark = len(host.seen)
    bridge.pending.append(ConnectionLost(0, 2))
    host.until(b"\r\n+CMQTTCONNLOST: 0,2\r\n")


def test_hang_until_power_key() -> None:
    host = registered()
    host.modem.hang()
    host.mark = len(host.seen)
    host.write(b"AT\r")
    host.write(b"AT+CRESET\r")
    host.run(5.0)
    assert host.tail() == b""
    host.modem.power_key(host.now)
    host.until(b"*ATREADY: 1")
    assert host.cmd("AT") == b"AT\r\r\nOK\r\n"  # a fresh boot: echo on again


def test_creset_reboots() -> None:
    host = registered()
    assert host.cmd("AT+CRESET") == b"\r\nOK\r\n"
    host.until(b"*ATREADY: 1")
    host.until(b"+CPIN: READY")


def test_garble_and_slow() -> None:
    clean = registered(seed=5)
    noisy = registered(seed=5)
    noisy.modem.garble_probability = 1.0
    clean.mark, noisy.mark = len(clean.seen), len(noisy.seen)
    clean.write(b"AT+CSQ\r")
    noisy.write(b"AT+CSQ\r")
    clean.run(1.0)
    noisy.run(1.0)
    assert len(clean.tail()) == len(noisy.tail()) > 0
    assert all(a != b for a, b in zip(clean.tail(), noisy.tail(), strict=True))
    slow = registered()
    slow.modem.slow_factor = 100.0
    slow.mark = len(slow.seen)
    slow.write(b"AT\r")
    slow.run(1.0)
    assert b"OK" not in slow.tail()  # simulated time: 100 x 20-60 ms
    slow.until(b"\r\nOK\r\n", within=10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_arbitrary_input_never_raises(chunks: list[bytes]) -> None:
    modem = A7670(bridge=FakeBridge(), boot_s=0.1, register_s=0.1, seed=1)
    now = 0.0
    for chunk in chunks:
        now += 0.05
        modem.receive(chunk, now)
        assert isinstance(modem.output(now), bytes)
    modem.receive(b"\x1b\r\nAT\r", now + 1)
    assert isinstance(modem.output(now + 2), bytes)


# -- integration: pty + real mosquitto + paho --


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_mosquitto(*, anonymous: bool = True) -> Iterator[int]:
    """A private mosquitto on a free port (the shared fixture is another helper's)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.skip("install mosquitto (apt install mosquitto)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous {str(anonymous).lower()}\n"
            "persistence false\n"
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert proc.poll() is None, "mosquitto exited"
                    assert time.monotonic() < deadline, "mosquitto did not listen"
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=5)


@pytest.fixture
def mosquitto_port() -> Iterator[int]:
    with running_mosquitto() as port:
        yield port


class SerialHost:
    """A pyserial client of the pty, reading by pattern with generous bounds."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 115200, timeout=0.02)
        self.buf = bytearray()

    def read_until(self, pattern: bytes, within: float = 15.0) -> bytes:
        deadline = time.monotonic() + within
        while pattern not in self.buf:
            assert time.monotonic() < deadline, f"no {pattern!r} in {bytes(self.buf)!r}"
            self.buf += self.port.read(4096)
        end = self.buf.index(pattern) + len(pattern)
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    def cmd(self, line: str, expect: bytes = b"\r\nOK\r\n", within: float = 15.0) -> bytes:
        self.port.write(line.encode() + b"\r")
        return self.read_until(expect, within)

    def data(self, line: str, data: bytes) -> bytes:
        self.port.write(line.encode() + b"\r")
        self.read_until(b"\r\n>")
        self.port.write(data)
        return self.read_until(b"\r\nOK\r\n")


def test_pty_bridge_to_mosquitto(mosquitto_port: int) -> None:
    received: list[tuple[str, bytes]] = []
    got = threading.Event()
    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher")

    def on_message(client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        received.append((message.topic, bytes(message.payload)))
        got.set()

    watcher.on_message = on_message
    watcher.connect("127.0.0.1", mosquitto_port)
    watcher.subscribe("skycourier/v1/d1/#", qos=1)
    watcher.loop_start()
    bridge = PahoBridge()
    modem = A7670(bridge=bridge, seed=2, boot_s=3.0, register_s=2.0, time_scale=0.05)
    try:
        with A7670Pty(modem) as runner:
            assert runner.path is not None
            host = SerialHost(runner.path)
            host.read_until(b"*ATREADY: 1")
            host.cmd("ATE0")
            host.read_until(b"+CGEV: EPS PDN ACT 1")
            host.cmd("AT+CMQTTSTART", b"+CMQTTSTART: 0")
            host.cmd('AT+CMQTTACCQ=0,"d1"')
            host.cmd('AT+CMQTTCFG="version",0,4')
            host.data("AT+CMQTTWILLTOPIC=0,22", b"skycourier/v1/d1/state")
            host.data("AT+CMQTTWILLMSG=0,4,1", b"lost")
            server = f"tcp://127.0.0.1:{mosquitto_port}"
            host.cmd(f'AT+CMQTTCONNECT=0,"{server}",60,1', b"+CMQTTCONNECT: 0,0\r\n")
            cmd_topic = b"skycourier/v1/d1/cmd"
            host.data(f"AT+CMQTTSUB=0,{len(cmd_topic)},1", cmd_topic)
            host.read_until(b"+CMQTTSUB: 0,0\r\n")

            payload = b'{"seq":1,"lat":51.5}'
            telemetry = b"skycourier/v1/d1/telemetry"
            host.data(f"AT+CMQTTTOPIC=0,{len(telemetry)}", telemetry)
            host.data(f"AT+CMQTTPAYLOAD=0,{len(payload)}", payload)
            host.cmd("AT+CMQTTPUB=0,1,60", b"+CMQTTPUB: 0,0\r\n")
            assert got.wait(10), "the watcher never got the publish"
            assert received[-1] == ("skycourier/v1/d1/telemetry", payload)

            watcher.publish(cmd_topic.decode(), b"RTL\r\nnow", qos=1).wait_for_publish(5)
            host.read_until(b"+CMQTTRXSTART: 0,20,8\r\n")
            rx = host.read_until(b"+CMQTTRXEND: 0\r\n")
            assert rx == (
                b"+CMQTTRXTOPIC: 0,20\r\nskycourier/v1/d1/cmd\r\n"
                b"+CMQTTRXPAYLOAD: 0,8\r\nRTL\r\nnow\r\n+CMQTTRXEND: 0\r\n"
            )

            got.clear()
            runner.set_coverage(False)  # the link dies: the broker publishes the will
            host.read_until(b"+CMQTTCONNLOST: 0,3\r\n")
            assert got.wait(10), "no will after the link died"
            assert ("skycourier/v1/d1/state", b"lost") in received
            host.port.close()
    finally:
        bridge.close()
        watcher.loop_stop()
        watcher.disconnect()


def test_pty_connect_failures() -> None:
    """A closed port, a name that does not resolve, a broker that says no: each its <err>."""
    bridge = PahoBridge()
    modem = A7670(bridge=bridge, seed=4, boot_s=1.0, register_s=1.0, time_scale=0.05)
    try:
        with running_mosquitto(anonymous=False) as strict_port, A7670Pty(modem) as runner:
            assert runner.path is not None
            host = SerialHost(runner.path)
            host.read_until(b"+CGEV: EPS PDN ACT 1")
            host.cmd("ATE0")
            host.cmd("AT+CMQTTSTART", b"+CMQTTSTART: 0")
            host.cmd('AT+CMQTTACCQ=0,"d2"')
            for server, err in (
                (f"127.0.0.1:{_free_port()}", 3),  # nobody listens there
                ("no-such-host.invalid:1883", 25),
                (f"127.0.0.1:{strict_port}", 31),  # CONNACK 5: not authorized
            ):
                line = f'AT+CMQTTCONNECT=0,"tcp://{server}",60,1'
                host.cmd(line, f"+CMQTTCONNECT: 0,{err}\r\n".encode())
            host.port.close()
    finally:
        bridge.close()
