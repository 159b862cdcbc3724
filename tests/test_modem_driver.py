"""The A7670 driver without a pty: the supervisor's state machine and recovery ladder, the
AT MQTT transport and SMS, each against a scripted module behind a real `AtEngine`.

`FakeChannel.call` runs each command through a real `AtEngine`: the `FakeModem` answers with
the bytes a module would send (echo off, `\\r\\n<line>\\r\\n` framing, `> ` prompts), so the
code under test sees genuine `AtResponse`s, `Urc`s and `MqttMessage`s; a modem that does not
answer makes the engine time the command out. The fake knows each command the driver sends
and checks what it carries (the data after a prompt against the announced length, a
certificate's name and content, TLS settings that name a downloaded certificate, an SMS PDU
against its length); anything else is answered ERROR, as a module answers what it does not
know, so a wrong command fails the test instead of passing unnoticed. No threads (except
the transport's delivery thread and the SMS fallback's worker), no sleeps beyond the tiny
timeouts below.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion.modem.at_engine import AtCommand, AtEngine, AtResponse, MqttMessage, Urc
from companion.modem.mqtt_at import AtMqttLimitError, AtMqttTransport
from companion.modem.responses import csq_to_dbm, parse_cpsi
from companion.modem.sms import SmsClient, SmsError, SmsFallback, SmsMessage, number_is_one_of
from companion.modem.state import STAGES, ModemState
from companion.modem.supervisor import ModemSupervisor, SupervisorTimeouts
from companion.telemetry.transport import TransportError
from sim.modem import sms_pdu as network
from tests.waiting import wait_until


def framed(*lines: str) -> bytes:
    return b"".join(b"\r\n" + line.encode() + b"\r\n" for line in lines)


ERROR = framed("ERROR")
_WRITE_RE = re.compile(r"^AT(\+[A-Z]+)=(.*)$")
_PEM_RE = re.compile(
    rb"^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?$"
)
WHEN = datetime(2025, 4, 27, 13, 44, 52, tzinfo=timezone.utc)


def deliver_pdu(sender: str, text: str) -> str:
    """An SMS-DELIVER as the network (the emulator's independent codec) builds it."""
    (part,) = network.split(text, 1)
    return network.deliver(sender, part, WHEN)[1]


@dataclass
class FakeModem:
    """Answers by state; tests flip the fields to script a scenario. Unknown commands and
    parameters out of the manual's ranges get ERROR."""

    sim: str = "READY"  # "READY" | "SIM PIN" | "absent" | "busy"
    pin: str = "1234"
    cereg: int = 1
    netopen_result: int = 0
    net_open: bool = False
    connect_result: int = 0
    pub_result: int = 0
    answering: bool = True
    cmgs_ok: bool = True
    still_connected: bool = False  # what AT+CMQTTDISC? says about client 0
    cgdcont_locked: bool = False  # refuse a CGDCONT write while registered (some firmware)
    apn: str = ""
    radio: int = 1
    cmgf: int = 0
    store: str = "ME"
    #: The store: index -> PDU in hex (with SMSC part), as AT+CMGR prints it in PDU mode.
    inbox: dict[int, str] = field(default_factory=dict)
    sent_pdus: list[tuple[int, str]] = field(default_factory=list)
    urcs_after: dict[str, list[str]] = field(default_factory=dict)
    certificates: dict[str, bytes] = field(default_factory=dict)
    ssl: dict[str, str] = field(default_factory=dict)
    accq_tls: bool = False

    def answer(self, command: AtCommand) -> bytes | None:
        """The module's reply to `command` (after its data, if any); None = silence."""
        if not self.answering:
            return None
        line = command.line
        extra = framed(*self.urcs_after.pop(line, []))
        self.data = command.data
        return self._answer(line) + extra

    data: bytes | None = None  # what the command sent after its prompt

    def _answer(self, line: str) -> bytes:
        ok = framed("OK")
        if line in ("AT", "ATE0", "AT+CMEE=2", "AT+CEREG=2", "AT+CREG=2", "AT+CSDH=1"):
            return ok
        if line == "AT+CPIN?":
            if self.sim == "absent":
                return framed("+CME ERROR: SIM not inserted")
            if self.sim == "busy":
                return framed("+CME ERROR: SIM busy")
            return framed(f"+CPIN: {self.sim}", "OK")
        if line.startswith("AT+CPIN="):
            if line == f'AT+CPIN="{self.pin}"':
                self.sim = "READY"
                return ok + framed("+CPIN: READY")
            return framed("+CME ERROR: incorrect password")
        if line.startswith("AT+CGDCONT="):
            match = re.fullmatch(r'AT\+CGDCONT=1,"IP","([^",]*)"', line)
            if match is None:
                return ERROR
            if self.cgdcont_locked and self.radio == 1 and match.group(1) != self.apn:
                return ERROR
            self.apn = match.group(1)
            return ok
        if line == "AT+CGDCONT?":
            return framed(f'+CGDCONT: 1,"IP","{self.apn}","0.0.0.0",0,0,0,0,0,0', "OK")
        if line in ("AT+CFUN=0", "AT+CFUN=1"):
            self.radio = int(line[-1])
            return ok
        if line in ("AT+COPS=0", "AT+CRESET"):
            return ok
        if line == "AT+CEREG?":
            return framed(f"+CEREG: 2,{self.cereg}", "OK")
        if line == "AT+CREG?":
            return framed(f"+CREG: 2,{self.cereg}", "OK")
        if line == "AT+CSQ":
            return framed("+CSQ: 20,99", "OK")
        if line == "AT+CPSI?":
            return framed(
                "+CPSI: LTE,Online,460-11,0x7764,117148181,127,EUTRAN-BAND1,100,5,5,8,53,60,-4",
                "OK",
            )
        if line == "AT+COPS?":
            return framed('+COPS: 0,0,"vodafone UK",7', "OK")
        if line == "AT+NETOPEN?":
            return framed(f"+NETOPEN: {int(self.net_open)}", "OK")
        if line == "AT+NETOPEN":
            if self.net_open:
                return framed("+IPERROR: Network is already opened", "ERROR")
            self.net_open = self.netopen_result == 0
            return ok + framed(f"+NETOPEN: {self.netopen_result}")
        if line == "AT+NETCLOSE":
            self.net_open = False
            return ok + framed("+NETCLOSE: 0")
        if line.startswith("AT+CMQTT") or line.startswith(("AT+CCERTDOWN", "AT+CSSLCFG")):
            return self._mqtt(line, self.data)
        if line.startswith(("AT+CMGF", "AT+CPMS", "AT+CNMI", "AT+CMG")):
            return self._sms(line, self.data)
        return ERROR  # what a module says to a command it does not know

    def _mqtt(self, line: str, data: bytes | None) -> bytes:
        ok = framed("OK")
        if line == "AT+CMQTTSTART":
            return ok + framed("+CMQTTSTART: 0")
        if line == "AT+CMQTTSTOP":
            return ok + framed("+CMQTTSTOP: 0")
        if match := re.fullmatch(r'AT\+CMQTTACCQ=0,"([^"]{1,128})"(,1)?', line):
            self.accq_tls = match.group(2) is not None
            return ok
        if line == "AT+CMQTTREL=0":
            return ok
        if re.fullmatch(
            r'AT\+CMQTTCFG="(version",0,[34]|checkUTF8",0,[01]|optimeout",0,\d+)', line
        ):
            return ok
        if match := re.fullmatch(r'AT\+CCERTDOWN="([^"]+\.(?:pem|der))",(\d+)', line):
            # §19.2.2: exactly <len> bytes after the prompt, a certificate
            if data is None or len(data) != int(match.group(2)) or not _PEM_RE.match(data):
                return ERROR
            self.certificates[match.group(1)] = data
            return ok
        if match := re.fullmatch(r'AT\+CSSLCFG="(\w+)",0,(.+)', line):
            key, value = match.groups()
            allowed = {
                "sslversion": r"[0-4]",
                "authmode": r"[0-3]",
                "cacert": r'"[^"]+"',
                "enableSNI": r"[01]",
            }
            if key not in allowed or not re.fullmatch(allowed[key], value):
                return ERROR
            if key == "cacert" and value.strip('"') not in self.certificates:
                return ERROR  # a CA the module does not hold
            self.ssl[key] = value.strip('"')
            return ok
        if line == "AT+CMQTTSSLCFG=0,0":
            # server authentication needs its CA configured in SSL context 0 first
            if self.ssl.get("authmode") != "1" or self.ssl.get("cacert") not in self.certificates:
                return ERROR
            return ok
        if match := re.fullmatch(
            r"AT\+CMQTT(WILLTOPIC|TOPIC|PAYLOAD|SUB)=0,(\d+)(,[012])?(,0)?", line
        ):
            if data is None or len(data) != int(match.group(2)):
                return ERROR
            if match.group(1) == "SUB":
                return ok + framed("+CMQTTSUB: 0,0")
            return ok
        if match := re.fullmatch(r"AT\+CMQTTWILLMSG=0,(\d+),[012]", line):
            return ok if data is not None and len(data) == int(match.group(1)) else ERROR
        if line.startswith('AT+CMQTTCONNECT=0,"tcp://'):
            if self.accq_tls and "cacert" not in self.ssl:
                return ok + framed("+CMQTTCONNECT: 0,33")  # "not set certificate"
            return ok + framed(f"+CMQTTCONNECT: 0,{self.connect_result}")
        if re.fullmatch(r"AT\+CMQTTPUB=0,[012],\d+(,[01])?", line):
            return ok + framed(f"+CMQTTPUB: 0,{self.pub_result}")
        if line == "AT+CMQTTDISC?":
            return framed(f"+CMQTTDISC: 0,{int(not self.still_connected)}", "+CMQTTDISC: 1,1", "OK")
        if re.fullmatch(r"AT\+CMQTTDISC=0,\d+", line):
            return ok + framed("+CMQTTDISC: 0,0")
        return ERROR

    def _sms(self, line: str, data: bytes | None) -> bytes:
        ok = framed("OK")
        if line in ("AT+CMGF=0", "AT+CMGF=1"):
            self.cmgf = int(line[-1])
            return ok
        if line == "AT+CMGF?":
            return framed(f"+CMGF: {self.cmgf}", "OK")
        if line == 'AT+CPMS="ME","ME","ME"':
            self.store = "ME"
            return framed(f"+CPMS: {len(self.inbox)},180,{len(self.inbox)},180,0,180", "OK")
        if line == 'AT+CPMS="SM","SM","SM"':
            self.store = "SM"  # the SIM's store: empty here
            return framed("+CPMS: 0,50,0,50,0,50", "OK")
        if line == "AT+CPMS?":
            used = len(self.inbox)
            return framed(f'+CPMS: "ME",{used},180,"ME",{used},180,"ME",{used},180', "OK")
        if line == "AT+CNMI=2,1,0,0,0":
            return ok
        if self.cmgf != 0:  # this fake speaks PDU mode only
            return framed("+CMS ERROR: 302")
        if match := re.fullmatch(r"AT\+CMGS=(\d+)", line):
            tpdu = int(match.group(1))
            if data is None or not data.endswith(b"\x1a"):
                return framed("+CMS ERROR: 304")
            pdu = data[:-1].decode()
            try:
                network.read_submit(pdu, tpdu)
            except network.PduError:
                return framed("+CMS ERROR: 304")
            if not self.cmgs_ok:
                return framed("+CMS ERROR: 331")
            self.sent_pdus.append((tpdu, pdu))
            return framed("+CMGS: 46", "OK")
        if line == "AT+CMGL=4" and self.store == "SM":
            return ok
        if line == "AT+CMGL=4":
            listing = [
                f'+CMGL: {i},0,"",{len(bytes.fromhex(p)) - 1 - int(p[:2], 16)}\r\n{p}'
                for i, p in sorted(self.inbox.items())
            ]
            return framed(*listing, "OK")
        if match := re.fullmatch(r"AT\+CMGR=(\d+)", line):
            pdu = self.inbox.get(int(match.group(1)))
            if pdu is None:
                return framed("+CMS ERROR: 321")
            tpdu = len(bytes.fromhex(pdu)) - 1 - int(pdu[:2], 16)
            return framed(f'+CMGR: 0,"",{tpdu}\r\n{pdu}', "OK")
        if match := re.fullmatch(r"AT\+CMGD=(\d+)", line):
            self.inbox.pop(int(match.group(1)), None)
            return ok
        return ERROR


class FakeChannel:
    """The parts of `AtChannel` the driver uses, synchronous: `call` returns at once."""

    is_open = True
    error: str | None = None

    def __init__(self, modem: FakeModem | None = None) -> None:
        self.modem = modem or FakeModem()
        self.engine = AtEngine(echo_expected=False)
        self.now = 0.0
        self.sent: list[AtCommand] = []
        self.resets: list[str] = []
        self.urc_callbacks: list[Callable[[Urc], None]] = []
        self.mqtt_callbacks: list[Callable[[MqttMessage], None]] = []

    @property
    def lines(self) -> list[str]:
        return [c.line for c in self.sent]

    def wait_open(self, timeout_s: float) -> bool:
        return True

    def subscribe_urc(self, callback: Callable[[Urc], None]) -> None:
        self.urc_callbacks.append(callback)

    def unsubscribe_urc(self, callback: Callable[[Urc], None]) -> None:
        if callback in self.urc_callbacks:
            self.urc_callbacks.remove(callback)

    def subscribe_mqtt(self, callback: Callable[[MqttMessage], None]) -> None:
        self.mqtt_callbacks.append(callback)

    def unsubscribe_mqtt(self, callback: Callable[[MqttMessage], None]) -> None:
        if callback in self.mqtt_callbacks:
            self.mqtt_callbacks.remove(callback)

    def reset_engine(self, reason: str = "module reset") -> None:
        self.resets.append(reason)
        self.engine.abort_all(reason)

    def inject(self, data: bytes) -> None:
        """Bytes the module sends unprompted (URCs, incoming MQTT messages)."""
        self.now += 0.01
        for event in self.engine.receive(data, self.now):
            self._dispatch(event)

    def call(self, command: AtCommand) -> AtResponse:
        self.sent.append(command)
        self.now += 0.01
        self.engine.submit(command)
        self.engine.outgoing(self.now)
        reply = self.modem.answer(command)
        if reply is None:
            self.now += command.timeout_s + command.urc_timeout_s + 1
            events = self.engine.poll(self.now)
            for event in events:
                self._dispatch(event)
            (response,) = [e for e in events if isinstance(e, AtResponse)]
            return response
        if command.data is not None:
            self._feed(b"\r\n> ")
            self.engine.outgoing(self.now)
        result = [e for e in self._feed(reply) if isinstance(e, AtResponse)]
        if not result:  # an answer that does not end by itself (an unframed SMS body)
            self.now += command.timeout_s + 1
            result = [e for e in self.engine.poll(self.now) if isinstance(e, AtResponse)]
        assert len(result) == 1, f"{command.line}: {result}"
        return result[0]

    def _feed(self, data: bytes) -> list[object]:
        events = self.engine.receive(data, self.now)
        for event in events:
            self._dispatch(event)
        return events

    def _dispatch(self, event: object) -> None:
        if isinstance(event, Urc):
            for callback in list(self.urc_callbacks):
                callback(event)
        elif isinstance(event, MqttMessage):
            for mqtt_callback in list(self.mqtt_callbacks):
                mqtt_callback(event)


# -- supervisor ----------------------------------------------------------------------------

FAST = SupervisorTimeouts(
    probe_s=0.5,
    boot_s=0.3,
    sim_s=0.3,
    register_s=0.3,
    lost_s=0.3,
    poll_s=0.0,
    retry_s=0.0,
    failed_retry_s=0.0,
    settle_s=0.01,
)


def supervisor(
    modem: FakeModem | None = None, **kwargs: object
) -> tuple[ModemSupervisor, FakeChannel, list[ModemState]]:
    channel = FakeChannel(modem)
    states: list[ModemState] = []
    kwargs.setdefault("apn", "internet")
    sup = ModemSupervisor(channel, states.append, timeouts=FAST, **kwargs)  # type: ignore[arg-type]
    channel.subscribe_urc(sup.handle_urc)
    return sup, channel, states


def test_bring_up_reaches_up_and_publishes_every_stage() -> None:
    sup, channel, states = supervisor()
    # boot URCs in an unusual order, interleaved with the first answers
    channel.modem.urcs_after["AT"] = ["SMS DONE", "*ATREADY: 1", "PB DONE", "+CPIN: READY"]

    sup.step()

    stages = [s.stage for s in states]
    assert stages[0] == "booting" and set(stages) <= set(STAGES)
    order = ["booting", "sim", "registering", "data", "up"]
    for earlier, later in itertools.pairwise(order):
        assert stages.index(earlier) < stages.index(later)
    final = sup.state
    assert final.stage == "up" and final.error is None
    assert final.sim == "READY" and final.registered and final.registration == "home"
    assert final.operator == "vodafone UK" and final.rat == "LTE"
    assert final.rssi_dbm == -73  # +CSQ: 20 -> -113 + 40
    assert final.rsrp_dbm == -87 and final.rsrq_db == -16 and final.sinr_db == -4
    assert final.data_up and not final.mqtt_up
    assert sup.boot_seen >= {"*ATREADY", "SMS DONE", "PB DONE"}
    lines = channel.lines
    assert lines.index("ATE0") < lines.index("AT+CMEE=2") < lines.index("AT+CPIN?")
    assert lines.index('AT+CGDCONT=1,"IP","internet"') < lines.index("AT+NETOPEN")
    # every published state differs from the one before (published on change only)
    for before, after in itertools.pairwise(states):
        assert {k: v for k, v in vars(before).items() if k != "at"} != {
            k: v for k, v in vars(after).items() if k != "at"
        }


def test_pin_is_entered_once_and_sim_becomes_ready() -> None:
    sup, channel, _ = supervisor(FakeModem(sim="SIM PIN", pin="4321"), pin="4321")
    sup.step()
    assert sup.state.stage == "up"
    assert channel.lines.count('AT+CPIN="4321"') == 1


def test_wrong_pin_stops_and_is_never_retried() -> None:
    sup, channel, _ = supervisor(FakeModem(sim="SIM PIN", pin="4321"), pin="1111")
    for _ in range(3):
        sup.step()
    assert sup.state.stage == "failed"
    assert sup.state.error == "SIM PIN rejected (+CME ERROR: incorrect password)"
    assert channel.lines.count('AT+CPIN="1111"') == 1  # never burn the PUK


def test_restart_with_a_new_pin_tries_once_more() -> None:
    sup, _, _ = supervisor(FakeModem(sim="SIM PIN", pin="4321"), pin="1111")
    sup.step()
    sup.restart(pin="4321")
    sup.step()
    assert sup.state.stage == "up"


def test_no_sim_is_a_clear_final_error() -> None:
    sup, channel, _ = supervisor(FakeModem(sim="absent"))
    sup.step()
    sup.step()
    assert sup.state.stage == "failed"
    assert sup.state.sim == "absent"
    assert sup.state.error == "no SIM card (+CME ERROR: SIM not inserted)"
    assert channel.lines.count("AT+CPIN?") == 1


def test_sim_busy_after_boot_is_waited_for() -> None:
    modem = FakeModem(sim="busy")
    sup, channel, _ = supervisor(modem)
    channel.modem.urcs_after["AT+CMEE=2"] = []
    original = modem._answer

    def answer(line: str) -> bytes:
        if line == "AT+CPIN?" and channel.lines.count("AT+CPIN?") >= 3:
            modem.sim = "READY"
        return original(line)

    modem._answer = answer  # type: ignore[method-assign]
    sup.step()
    assert sup.state.stage == "up"


def test_apn_refused_by_the_network_is_reported_and_retried_later() -> None:
    sup, channel, _ = supervisor(FakeModem(netopen_result=1), apn="wrong.apn")
    sup.step()
    assert sup.state.stage == "failed"
    error = sup.state.error or ""
    assert error.startswith("APN 'wrong.apn' refused by the network (+NETOPEN: 1")
    assert "network failure" in error.lower()
    channel.modem.netopen_result = 0
    sup.step()  # failed_retry_s is 0 here: tried again
    assert sup.state.stage == "up"


def test_netopen_already_open_counts_as_data_up() -> None:
    modem = FakeModem()
    sup, _, _ = supervisor(modem)
    original = modem._answer
    modem._answer = (  # type: ignore[method-assign]
        lambda line: framed("+NETOPEN: 0", "OK") if line == "AT+NETOPEN?" else original(line)
    )
    modem.net_open = True
    sup.step()
    assert sup.state.data_up and sup.state.stage == "up"


@pytest.mark.parametrize(
    "urc",
    ["+CMQTTNONET", "+CIPEVENT: NETWORK CLOSED UNEXPECTEDLY", "+CGEV: NW PDN DEACT 1"],
)
def test_data_context_loss_brings_data_up_again(urc: str) -> None:
    sup, channel, _ = supervisor()
    sup.step()
    assert sup.state.stage == "up"
    before = channel.lines.count("AT+NETOPEN")
    channel.inject(framed(urc))
    assert not sup.state.data_up
    sup.step()
    assert sup.state.stage == "up" and sup.state.data_up
    assert channel.lines.count("AT+NETOPEN") == before + 1
    assert "AT+NETCLOSE" in channel.lines  # the stack still said open: closed first


class FakeClient:
    def __init__(self) -> None:
        self.established = 0
        self.lost: list[str] = []
        self.error: Exception | None = None

    def establish(self) -> None:
        if self.error is not None:
            raise self.error
        self.established += 1

    def link_lost(self, scope: str) -> None:
        self.lost.append(scope)


@pytest.mark.parametrize("urc", ["+CMQTTCONNLOST: 0,1", "+IPCLOSE: 0,1"])
def test_connection_loss_reconnects_mqtt_only(urc: str) -> None:
    sup, channel, _ = supervisor()
    client = FakeClient()
    sup.attach(client)
    sup.step()
    assert sup.state.mqtt_up and client.established == 1
    netopens = channel.lines.count("AT+NETOPEN")
    channel.inject(framed(urc))
    assert client.lost == ["connection"] and not sup.state.mqtt_up and sup.state.data_up
    sup.step()
    assert sup.state.mqtt_up and client.established == 2
    assert channel.lines.count("AT+NETOPEN") == netopens


def test_unexpected_boot_urc_means_the_module_rebooted() -> None:
    sup, channel, _ = supervisor()
    sup.step()
    ates = channel.lines.count("ATE0")
    channel.inject(framed("*ATREADY: 1"))
    assert channel.resets == ["module rebooted"]
    assert not sup.state.data_up
    sup.step()
    assert sup.state.stage == "up" and channel.lines.count("ATE0") == ates + 1


def ladder(states: list[ModemState]) -> list[str | None]:
    """The recovery steps as published, each once per climb."""
    steps = [s.recovery_step for s in states if s.stage == "recovering" and s.recovery_step]
    return [step for i, step in enumerate(steps) if i == 0 or steps[i - 1] != step]


def test_hung_module_climbs_the_ladder_to_the_power_key() -> None:
    modem = FakeModem()
    pulses: list[float] = []

    def power_key() -> None:
        pulses.append(time.monotonic())
        modem.answering = True

    sup, channel, states = supervisor(modem, power_key=power_key)
    sup.step()
    assert sup.state.stage == "up"
    modem.answering = False  # the firmware locks up
    sup.step()  # the watch poll times out -> ladder
    steps = ladder(states)
    assert steps[:4] == ["re-register", "radio toggle", "module reset", "power key"]
    assert len(pulses) == 1 and sup.state.recoveries == 4
    assert "AT+CRESET" in channel.lines and channel.resets == ["power-key pulse"]
    sup.step()
    assert sup.state.stage == "up"
    assert sup.state.recovery_step is None and sup.state.recoveries == 4


def test_ladder_without_power_key_starts_over_and_never_raises() -> None:
    modem = FakeModem(answering=False)
    sup, _, states = supervisor(modem)
    for _ in range(3):
        sup.step()
    steps = ladder(states)
    assert steps[:5] == ["re-register", "radio toggle", "module reset", "power key", "re-register"]
    assert "no power-key hook" in " ".join(s.error or "" for s in states)


def test_registration_timeout_recovers_by_re_registering() -> None:
    modem = FakeModem(cereg=2)
    sup, _, _ = supervisor(modem)
    original = modem._answer

    def answer(line: str) -> bytes:
        if line == "AT+COPS=0":
            modem.cereg = 5  # roaming after the re-register
        return original(line)

    modem._answer = answer  # type: ignore[method-assign]
    sup.step()
    assert sup.state.recovery_step == "re-register"
    assert "not registered after" in (sup.state.error or "")
    sup.step()
    assert sup.state.stage == "up" and sup.state.registration == "roaming"


def test_registration_lost_while_up_too_long_starts_the_ladder() -> None:
    sup, channel, _ = supervisor()
    sup.step()
    channel.modem.cereg = 2
    channel.inject(framed("+CEREG: 2"))
    assert not sup.state.registered
    time.sleep(FAST.lost_s + 0.05)
    sup.step()
    assert sup.state.recoveries == 1 and sup.state.recovery_step == "re-register"


def test_supervisor_thread_survives_a_broken_channel() -> None:
    class Broken(FakeChannel):
        def call(self, command: AtCommand) -> AtResponse:
            raise RuntimeError("bug in a lower layer")

    states: list[ModemState] = []
    sup = ModemSupervisor(Broken(), states.append, apn="internet", timeouts=FAST)  # type: ignore[arg-type]
    with sup:
        deadline = time.monotonic() + 5
        while not any("internal error" in (s.error or "") for s in states):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert sup._thread is not None and sup._thread.is_alive()
    assert sup.state.stage == "off"


def test_bad_configuration_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="invalid APN"):
        ModemSupervisor(FakeChannel(), print, apn='in"ternet')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4 to 8 digits"):
        ModemSupervisor(FakeChannel(), print, apn="internet", pin="12a4")  # type: ignore[arg-type]


def test_cgdcont_refused_while_the_context_is_active_does_not_halt_the_modem() -> None:
    """Issue 10, item 9: after a ladder step the module is still attached, and some
    firmware refuses the CGDCONT write then. Same APN: nothing to do; another APN: written
    with the radio off. Never a halt that waits for a person."""
    modem = FakeModem(cgdcont_locked=True)
    sup, channel, _ = supervisor(modem, apn="internet")
    sup.step()
    assert sup.state.stage == "up"
    modem.cereg = 2  # registration lost; the ladder re-registers (resume: "registering")
    channel.inject(framed("+CEREG: 2"))
    sup._lost_since = -1e9  # lost long ago (the watch's timer, driven explicitly)
    modem.cereg = 1
    sup.step()
    sup.step()
    assert sup.state.stage == "up" and not sup._halted
    assert channel.lines.count("AT+CGDCONT?") == 1  # refused, but context 1 had the APN
    sup.apn = "other.apn"
    sup.restart()
    sup.step()
    assert sup.state.stage == "up" and modem.apn == "other.apn"
    assert channel.lines[-20:].count("AT+CFUN=0") == 1  # written with the radio off


def test_a_cgdcont_refused_even_with_the_radio_off_is_retried_later() -> None:
    modem = FakeModem(cgdcont_locked=True, apn="locked.apn")
    sup, _, _ = supervisor(modem, apn="internet")
    original = modem._answer
    modem._answer = (  # type: ignore[method-assign]
        lambda line: ERROR if line.startswith("AT+CGDCONT=") else original(line)
    )
    sup.step()
    assert sup.state.stage == "failed" and "not accepted by the module" in (sup.state.error or "")
    assert not sup._halted  # a refusal: tried again after failed_retry_s, no restart needed
    modem._answer = original  # type: ignore[method-assign]
    modem.cgdcont_locked = False
    sup.step()
    assert sup.state.stage == "up"


@pytest.mark.parametrize("line", ["+CEREG: \u00b2", "+CEREG: \u0663", "+CSQ: \u00b2\u00b2,99"])
def test_digit_like_characters_in_urcs_are_not_numbers(line: str) -> None:
    sup, channel, _ = supervisor()
    sup.step()
    channel.inject(framed(line))  # would raise ValueError in int() before
    assert sup.state.registered


def test_a_pin_never_appears_in_an_error() -> None:
    """The PIN is a parameter of AT+CPIN=: errors name the command, never its parameters."""
    modem = FakeModem(sim="SIM PIN", pin="4321")
    sup, channel, states = supervisor(modem, pin="9876")
    original = modem.answer
    modem.answer = (  # type: ignore[method-assign]
        lambda command: None if command.line.startswith("AT+CPIN=") else original(command)
    )
    sup.step()
    errors = [s.error for s in states if s.error]
    assert errors and any("AT+CPIN" in e for e in errors)
    assert not any("9876" in e for e in errors)
    assert "9876" not in repr(channel.sent[-1]) and "9876" not in repr(AtCommand('AT+CPIN="9876"'))


# -- signal parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rssi", "dbm"), [(0, -113), (1, -111), (2, -109), (27, -59), (30, -53), (31, -51), (99, None)]
)
def test_csq_to_dbm_follows_the_manual(rssi: int, dbm: int | None) -> None:
    assert csq_to_dbm(rssi) == dbm


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # manual example: RSRQ 21 -> -9.5 dB, RSRP 67 -> -73 dBm
        ("LTE,Online,460-01,0x230A,175499523,318,EUTRAN-BAND3,1650,5,0,21,67,255,19",
         ("LTE", -73.0, -9.5, 19.0)),
        ("LTE,Online,722-310,0x5410,1360140,485,EUTRAN-BAND7,3050,5,5,15,55,56,5",
         ("LTE", -85.0, -12.5, 5.0)),
        ("NO SERVICE,Online", ("NO SERVICE", None, None, None)),
        ("NOSERVICE,LowPowerMode", ("NO SERVICE", None, None, None)),
        ("GSM,Online,460-00,0x182d,12401,27 EGSM 900,-64,2110,42-42", ("GSM", None, None, None)),
    ],
)  # fmt: skip
def test_parse_cpsi(text: str, expected: tuple[object, ...]) -> None:
    assert parse_cpsi(text) == expected


@given(st.text(max_size=200))
def test_parse_cpsi_never_raises(text: str) -> None:
    rat, *_ = parse_cpsi(text)
    assert rat in ("LTE", "GSM", "WCDMA", "NO SERVICE")


@given(st.integers(min_value=0, max_value=30))
def test_csq_is_monotonic(rssi: int) -> None:
    assert csq_to_dbm(rssi + 1) > csq_to_dbm(rssi)  # type: ignore[operator]


# -- MQTT over AT ----------------------------------------------------------------------------


def test_transport_connects_with_will_and_publishes_at_qos1() -> None:
    channel = FakeChannel()
    transport = AtMqttTransport(
        channel,
        client_id="drone-7",
        broker="tcp://10.0.0.1:1883",
        keepalive_s=30,  # type: ignore[arg-type]
    )
    try:
        transport.set_will("skycourier/v1/drone-7/status", b"offline", retain=False)
        transport.connect()
        assert transport.connected
        transport.publish("skycourier/v1/drone-7/telemetry", b'{"seq": 1}')
        lines = channel.lines
        assert lines[:6] == [
            "AT+CMQTTDISC?",  # is the client connected already? (no: fake says nothing)
            "AT+CMQTTSTART",
            'AT+CMQTTACCQ=0,"drone-7"',
            'AT+CMQTTCFG="version",0,4',
            "AT+CMQTTWILLTOPIC=0,28",
            "AT+CMQTTWILLMSG=0,7,1",
        ]
        assert lines[6] == 'AT+CMQTTCONNECT=0,"tcp://10.0.0.1:1883",30,1'
        assert lines[7:9] == ["AT+CMQTTTOPIC=0,31", "AT+CMQTTPAYLOAD=0,10"]
        assert lines[9].startswith("AT+CMQTTPUB=0,1,")
        assert channel.sent[7].data == b"skycourier/v1/drone-7/telemetry"
        assert channel.sent[8].data == b'{"seq": 1}'
    finally:
        transport.close()
    assert channel.lines[-1] == "AT+CMQTTSTOP"


def test_tls_downloads_the_ca_and_configures_the_ssl_context(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
    ca = tmp_path / "broker_ca.pem"
    ca.write_bytes(pem)
    channel = FakeChannel()
    transport = AtMqttTransport(channel, client_id="d", broker="tcp://h:8883", tls_ca=ca)  # type: ignore[arg-type]
    transport.connect()
    lines = channel.lines
    assert 'AT+CMQTTACCQ=0,"d",1' in lines  # server_type 1: SSL/TLS
    download = lines.index(f'AT+CCERTDOWN="broker_ca.pem",{len(pem)}')
    assert channel.sent[download].data == pem
    ssl_steps = [
        'AT+CSSLCFG="sslversion",0,4',
        'AT+CSSLCFG="authmode",0,1',
        'AT+CSSLCFG="cacert",0,"broker_ca.pem"',
        "AT+CMQTTSSLCFG=0,0",
        'AT+CMQTTCONNECT=0,"tcp://h:8883",60,1',
    ]
    indexes = [lines.index(step) for step in ssl_steps]
    assert download < indexes[0] and indexes == sorted(indexes)
    transport.close()


def test_unreadable_ca_is_a_clear_error(tmp_path: Path) -> None:
    channel = FakeChannel()
    missing = tmp_path / "nope.pem"
    transport = AtMqttTransport(channel, client_id="d", broker="tcp://h:1", tls_ca=missing)  # type: ignore[arg-type]
    with pytest.raises(TransportError, match=r"cannot read CA certificate .*nope\.pem"):
        transport.connect()
    transport.close()


def test_publish_failure_raises_transport_error_with_the_reason() -> None:
    channel = FakeChannel(FakeModem(pub_result=17))
    transport = AtMqttTransport(channel, client_id="d", broker="tcp://h:1")  # type: ignore[arg-type]
    transport.connect()
    with pytest.raises(TransportError, match="timeout"):
        transport.publish("a/b", b"x")
    transport.close()


def test_publish_limits_are_clear_errors() -> None:
    channel = FakeChannel()
    transport = AtMqttTransport(channel, client_id="d", broker="tcp://h:1")  # type: ignore[arg-type]
    transport.connect()
    with pytest.raises(AtMqttLimitError, match="10240"):
        transport.publish("a/b", bytes(10241))
    with pytest.raises(AtMqttLimitError, match="1-10240"):
        transport.publish("a/b", b"")
    with pytest.raises(AtMqttLimitError, match="1024"):
        transport.publish("t" * 1025, b"x")
    with pytest.raises(AtMqttLimitError, match="wildcard"):
        transport.publish("a/#", b"x")
    assert not any(line.startswith("AT+CMQTTTOPIC") for line in channel.lines)
    transport.publish("a/b", bytes(10240))  # the limit itself is fine
    transport.close()


def test_bad_transport_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="tcp://host:port"):
        AtMqttTransport(FakeChannel(), client_id="d", broker="mqtt://h:1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client id"):
        AtMqttTransport(FakeChannel(), client_id="", broker="tcp://h:1")  # type: ignore[arg-type]


def test_incoming_message_reaches_the_matching_subscriber() -> None:
    channel = FakeChannel()
    transport = AtMqttTransport(channel, client_id="d", broker="tcp://h:1")  # type: ignore[arg-type]
    got: list[tuple[str, bytes]] = []
    done = threading.Event()

    def on_cmd(topic: str, payload: bytes) -> None:
        got.append((topic, payload))
        done.set()

    transport.subscribe("skycourier/v1/d/cmd/#", on_cmd)
    transport.connect()
    assert "AT+CMQTTSUB=0,21,1" in channel.lines
    payload = b"RTL\r\nOK\r\n"
    topic = b"skycourier/v1/d/cmd/x"
    channel.inject(
        framed(f"+CMQTTRXSTART: 0,{len(topic)},{len(payload)}", f"+CMQTTRXTOPIC: 0,{len(topic)}")
        + topic
        + framed(f"+CMQTTRXPAYLOAD: 0,{len(payload)}")
        + payload
        + framed("+CMQTTRXEND: 0")
    )
    assert done.wait(5)
    assert got == [("skycourier/v1/d/cmd/x", payload)]
    transport.close()


def test_broker_refusal_is_a_clear_error_in_the_modem_state() -> None:
    sup, channel, _ = supervisor(FakeModem(connect_result=31))
    transport = AtMqttTransport(sup, client_id="d", broker="tcp://h:1")
    sup.step()
    assert sup.state.stage == "failed" and not sup.state.mqtt_up
    assert sup.state.error == (
        "broker tcp://h:1 refused the connection: "
        "+CMQTTCONNECT: 0,31 (connection refused: not authorized)"
    )
    with pytest.raises(TransportError, match="not authorized"):
        transport.publish("a/b", b"x")
    channel.modem.connect_result = 0
    sup.step()
    assert sup.state.stage == "up" and transport.connected
    transport.close()


def test_transport_under_supervisor_reconnects_after_connlost() -> None:
    sup, channel, _ = supervisor()
    transport = AtMqttTransport(sup, client_id="d", broker="tcp://h:1")
    sup.step()
    assert transport.connected
    channel.inject(framed("+CMQTTCONNLOST: 0,1"))
    assert not transport.connected
    with pytest.raises(TransportError, match="not connected"):
        transport.publish("a/b", b"x")
    starts = channel.lines.count("AT+CMQTTSTART")
    sup.step()
    assert transport.connected and transport.connections == 2
    assert channel.lines.count("AT+CMQTTSTART") == starts  # one connection lost: CONNECT only
    channel.inject(framed("+CMQTTNONET"))
    sup.step()
    assert transport.connected and channel.lines.count("AT+CMQTTSTART") == starts + 1
    transport.close()


def test_transport_attached_after_up_is_connected_by_the_supervisor() -> None:
    sup, _, _ = supervisor()
    sup.step()
    assert sup.state.stage == "up" and not sup.state.mqtt_up
    transport = AtMqttTransport(sup, client_id="late", broker="tcp://h:1")
    sup.step()  # the watch turn notices the new client
    sup.step()
    assert sup.state.mqtt_up and transport.connected
    transport.close()
    assert not sup.state.mqtt_up


def test_a_loss_the_broker_never_saw_needs_no_new_connection() -> None:
    sup, channel, _ = supervisor()
    transport = AtMqttTransport(sup, client_id="d", broker="tcp://h:1")
    sup.step()
    channel.inject(framed("+IPCLOSE: 1,1"))  # a socket, not the MQTT session
    channel.modem.still_connected = True
    connects = channel.lines.count('AT+CMQTTCONNECT=0,"tcp://h:1",60,1')
    sup.step()
    assert transport.connected and transport.connections == 1
    assert channel.lines.count('AT+CMQTTCONNECT=0,"tcp://h:1",60,1') == connects
    transport.close()


# -- SMS ---------------------------------------------------------------------------------------

OPERATOR = "+447700900123"
STRANGER = "+447700900999"


def sms_client(channel: FakeChannel, got: list[SmsMessage]) -> SmsClient:
    return SmsClient(channel, on_message=got.append, accept=number_is_one_of([OPERATOR]))  # type: ignore[arg-type]


def test_sms_send_uses_pdu_mode_and_ctrl_z() -> None:
    channel = FakeChannel()
    sms = SmsClient(channel)  # type: ignore[arg-type]
    assert sms.send(OPERATOR, "DRONE-7 DELIVERED") == 46
    assert channel.lines == [
        "AT+CMGF=0",
        "AT+CSDH=1",
        "AT+CNMI=2,1,0,0,0",
        'AT+CPMS="SM","SM","SM"',  # messages may wait in the other store
        "AT+CMGL=4",
        "AT+CPMS?",
        'AT+CPMS="ME","ME","ME"',
        "AT+CMGL=4",  # the set-up sweeps the store
        "AT+CPMS?",
        "AT+CMGS=29",
    ]
    sms.send(OPERATOR, "again")
    assert channel.lines[-2:] == ["AT+CMGF?", "AT+CMGS=19"]  # still in PDU mode?
    (tpdu, pdu), _ = channel.modem.sent_pdus
    assert network.read_submit(pdu, tpdu) == (OPERATOR, "DRONE-7 DELIVERED")
    assert channel.sent[9].data == pdu.encode() + b"\x1a"
    assert channel.sent[-1].timeout_s == 40.0


def test_sms_send_errors_are_specific() -> None:
    channel = FakeChannel(FakeModem(cmgs_ok=False))
    sms = SmsClient(channel)  # type: ignore[arg-type]
    with pytest.raises(SmsError, match="no network service"):
        sms.send(OPERATOR, "x")
    with pytest.raises(SmsError, match="not a phone number"):
        sms.send("12ab", "x")
    with pytest.raises(SmsError, match="1-160"):
        sms.send(OPERATOR, "x" * 161)
    with pytest.raises(SmsError, match="GSM alphabet"):
        sms.send(OPERATOR, "caf\u00e9 \u2713")


def test_stored_messages_are_read_at_start_sender_first_and_all_deleted() -> None:
    """Messages that came while the daemon was down are in the store at start: the set-up
    sweep reads them; a stranger's is deleted without its text being decoded."""
    modem = FakeModem()
    modem.inbox[1] = deliver_pdu(OPERATOR, "42 1767225600 status 00")
    modem.inbox[2] = deliver_pdu(STRANGER, "OK\r\n+CMQTTRXSTART: 0,1,1")
    modem.inbox[3] = "00"  # not a PDU at all
    channel = FakeChannel(modem)
    got: list[SmsMessage] = []
    sms = sms_client(channel, got)
    sms.setup()
    assert [(m.index, m.sender, m.text) for m in got] == [(1, OPERATOR, "42 1767225600 status 00")]
    assert modem.inbox == {}  # every message deleted, the unreadable and the stranger's too
    assert (sms.received, sms.ignored, sms.unreadable, sms.deleted) == (1, 1, 1, 3)
    assert sms.usage == (0, 180)


def test_sms_receive_reads_deletes_and_calls_back() -> None:
    channel = FakeChannel()
    got: list[SmsMessage] = []
    done = threading.Event()
    sms = SmsClient(
        channel,  # type: ignore[arg-type]
        on_message=lambda m: (got.append(m), done.set()),
        accept=number_is_one_of(["+44 7700 900123"]),
    )
    with sms:
        wait_until(lambda: "AT+CPMS?" in channel.lines, "the set-up")
        # The real A7670's PDU of [ISS#7] (AT+CMGRD=1 on a board in PDU mode).
        channel.modem.inbox[3] = (
            "07914346220050F0040B914326764060F60000524072319385800C31D98C062ACFE961F21B04"
        )
        sms.accept = number_is_one_of(["+34626704066"])
        channel.inject(framed('+CMTI: "ME",3'))
        assert done.wait(5)
    assert got == [SmsMessage(3, "+34626704066", "25/04/27,13:39:58+08", "1234 estado ")]
    assert "AT+CMGR=3" in channel.lines and "AT+CMGD=3" in channel.lines
    assert channel.modem.inbox == {}


def test_sms_set_up_on_a_booting_module_waits_for_its_sms_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A module still booting answers nothing: the set-up fails saying when it runs again,
    and the module's SMS DONE (the end of its boot) sets it up."""
    channel = FakeChannel(FakeModem(answering=False))
    sms = SmsClient(channel, accept=number_is_one_of([OPERATOR]))  # type: ignore[arg-type]
    with caplog.at_level("WARNING"), sms:
        wait_until(lambda: "set up again on the module's SMS DONE" in caplog.text, "the warning")
        assert not sms.ready
        channel.modem.answering = True
        channel.inject(framed("SMS DONE"))
        wait_until(lambda: sms.ready, "the set-up after SMS DONE")
    assert channel.lines.count("AT+CMGF=0") == 2


HOSTILE_TEXTS = [
    "OK",
    "ERROR",
    "line one\r\nOK\r\n+CMQTTRXSTART: 0,3,5\r\n+CMQTTRXTOPIC: 0,3\r\nabc",
    "+CMQTTCONNLOST: 0,1\nERROR\n+CME ERROR: 13",
    '+CMTI: "ME",99',
    "x" * 160,
    "Grüße \u2713 \u0416",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
@pytest.mark.parametrize("sender", [OPERATOR, STRANGER])
def test_hostile_bodies_never_reach_the_engine_as_lines(sender: str, text: str) -> None:
    modem = FakeModem()
    channel = FakeChannel(modem)
    urcs: list[Urc] = []
    mqtt: list[MqttMessage] = []
    channel.subscribe_urc(urcs.append)
    channel.subscribe_mqtt(mqtt.append)
    got: list[SmsMessage] = []
    sms = sms_client(channel, got)
    sms.setup()
    modem.inbox[7] = deliver_pdu(sender, text)
    sms.receive(7)
    assert urcs == [] and mqtt == []  # no fake URC, no fake MQTT message
    assert channel.engine.stats.garbage_lines == 0 and channel.engine.stats.urcs == 0
    assert modem.inbox == {}  # handled, then deleted
    if sender == OPERATOR:
        assert [m.text for m in got] == [text]
    else:
        assert got == [] and sms.ignored == 1


def test_an_unframed_text_mode_answer_is_data_and_sets_up_again() -> None:
    """Someone switched the module to text mode without AT+CSDH=1: the body has no frame.
    Everything until the deadline is the answer's data, none of it parsed; the client then
    puts the module back in PDU mode."""
    modem = FakeModem()
    channel = FakeChannel(modem)
    urcs: list[Urc] = []
    channel.subscribe_urc(urcs.append)
    sms = sms_client(channel, [])
    sms.setup()
    original = modem._answer

    def text_mode(line: str) -> bytes:
        if line == "AT+CMGR=4":
            body = "hi\r\nOK\r\n+CMQTTCONNLOST: 0,1"
            return framed(f'+CMGR: "REC UNREAD","{STRANGER}",,"25/04/27,13:44:52+08"') + (
                body.encode() + framed("OK")
            )
        return original(line)

    modem._answer = text_mode  # type: ignore[method-assign]
    sms.receive(4)
    assert urcs == []
    assert sms.unreadable == 1 and "AT+CMGD=4" in channel.lines
    before = channel.lines.count("AT+CMGF=0")
    sms.sweep()
    assert channel.lines.count("AT+CMGF=0") == before + 1


def test_a_module_that_left_pdu_mode_is_set_up_again_before_sending() -> None:
    modem = FakeModem()
    channel = FakeChannel(modem)
    sms = SmsClient(channel)  # type: ignore[arg-type]
    sms.setup()
    modem.cmgf = 1  # another program on another port
    sms.send(OPERATOR, "hello")
    assert modem.cmgf == 0 and len(modem.sent_pdus) == 1


def test_fallback_sends_critical_events_only_while_the_link_is_down() -> None:
    """The fallback sends from its own worker thread (the one thread that calls the fake
    channel); tests/test_sms_fallback.py covers the queueing."""
    channel = FakeChannel()
    link = {"up": True}
    with SmsFallback(
        SmsClient(channel),  # type: ignore[arg-type]
        numbers=[OPERATOR, "+447700900124"],
        link_up=lambda: link["up"],
        drone_id="drone-7",
    ) as fallback:
        assert not fallback.notify("delivered", "order 42")
        link["up"] = False
        assert not fallback.notify("telemetry")
        assert fallback.notify("delivered", "order 42")
        wait_until(lambda: fallback.sent == 2, "both SMS sent")
        sent = [network.read_submit(pdu, n) for n, pdu in channel.modem.sent_pdus]
        assert sent == [
            (OPERATOR, "drone-7 DELIVERED order 42"),
            ("+447700900124", "drone-7 DELIVERED order 42"),
        ]
        channel.modem.cmgs_ok = False
        assert fallback.notify("emergency", "motor failure")  # queued; failures are counted
        wait_until(lambda: fallback.failed == 2, "both failures counted")
    assert fallback.sent == 2


# -- the fake itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "AT+FOO",
        'AT+CMQTTCFG="verison",0,4',
        'AT+CSSLCFG="authmode",0,7',
        'AT+CSSLCFG="cacert",0,"never_downloaded.pem"',
        "AT+CMQTTSSLCFG=0,0",
        'AT+CGDCONT=1,"IP",internet',
    ],
)
def test_the_fake_module_answers_error_to_what_it_does_not_know(line: str) -> None:
    channel = FakeChannel()
    response = channel.call(AtCommand(line))
    assert response.final == "ERROR"


def test_the_fake_module_checks_what_follows_a_prompt() -> None:
    channel = FakeChannel()
    short = channel.call(AtCommand("AT+CMQTTTOPIC=0,5", data=b"abc"))
    assert short.final == "ERROR"
    not_pem = channel.call(AtCommand('AT+CCERTDOWN="ca.pem",5', data=b"hello"))
    assert not_pem.final == "ERROR"
