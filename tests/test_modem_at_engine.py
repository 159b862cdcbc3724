"""AtEngine: the A7670's AT exchanges as the manual and real sessions show them.

Exchanges are those of the A76XX AT Command Manual V1.09, the A76XX MQTT(S) and SMS
application notes, and real A7670 logs (shared/reference/a76xx/transcripts: LOG-AZ is the
LilyGO A7670G-LLSE Azure session, ISS#n the GitHub issue excerpts), as framed on the wire:
`<CR><LF>response<CR><LF>` (§1.4), with the command echoed first while ATE1 is on.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.modem.at_engine import (
    MAX_LINE,
    MAX_RESPONSE,
    MAX_RX_PAYLOAD,
    UNFRAMED_URC_S,
    AtCommand,
    AtEngine,
    AtResponse,
    MqttMessage,
    SmsData,
    Urc,
    command_prefix,
    redact,
    sms_framing,
)
from companion.modem.at_errors import (
    CME_ERRORS,
    CMS_ERRORS,
    MQTT_ERRORS,
    SOCKET_ERRORS,
    AtError,
    final_error,
)

CRLF = b"\r\n"


def wire(*lines: str | bytes) -> bytes:
    """Module output: each response line framed as CR LF line CR LF."""
    out = b""
    for line in lines:
        out += CRLF + (line.encode() if isinstance(line, str) else line) + CRLF
    return out


def echo(line: str) -> bytes:
    """What ATE1 sends back for a command line: the line and its CR."""
    return line.encode() + b"\r"


def send(engine: AtEngine, command: AtCommand, now: float = 0.0) -> bytes:
    engine.submit(command)
    written = engine.outgoing(now)
    assert written == command.line.encode() + b"\r"
    return written


def responses(events: list) -> list[AtResponse]:
    return [e for e in events if isinstance(e, AtResponse)]


def urcs(events: list) -> list[Urc]:
    return [e for e in events if isinstance(e, Urc)]


def exchange(command: AtCommand, reply: bytes, *, echo_expected: bool = True) -> list:
    engine = AtEngine(echo_expected=echo_expected)
    send(engine, command)
    return engine.receive(reply, 0.1)


# ---------------------------------------------------------------- basics and final codes


def test_at_ok_with_echo() -> None:
    events = exchange(AtCommand("AT"), echo("AT") + wire("OK"))
    assert events == [AtResponse(AtCommand("AT"), (), "OK")]
    assert events[0].ok


def test_at_ok_without_echo() -> None:
    events = exchange(AtCommand("AT"), wire("OK"))
    assert events == [AtResponse(AtCommand("AT"), (), "OK")]


def test_echo_accepted_even_when_not_expected() -> None:
    engine = AtEngine(echo_expected=False)
    send(engine, AtCommand("AT+CSQ"))
    events = engine.receive(echo("AT+CSQ") + wire("+CSQ: 27,99", "OK"), 0.1)
    assert events == [AtResponse(AtCommand("AT+CSQ"), ("+CSQ: 27,99",), "OK")]
    assert engine.stats.echoes == 1


def test_cpin_query_owns_its_prefix_line() -> None:
    # ISS#5: "AT+CPIN?" / "+CPIN: READY" / "OK": +CPIN is a URC name, but here it answers.
    events = exchange(AtCommand("AT+CPIN?"), echo("AT+CPIN?") + wire("+CPIN: READY", "OK"))
    assert events == [AtResponse(AtCommand("AT+CPIN?"), ("+CPIN: READY",), "OK")]


def test_cpin_after_error_is_a_urc() -> None:
    # LOG-AZ: AT+CPIN? -> +CME ERROR: 13, then +CPIN: READY arrives on its own.
    engine = AtEngine()
    send(engine, AtCommand("AT+CPIN?"))
    events = engine.receive(echo("AT+CPIN?") + b"\r\n+CME ERROR: 13\r\n\r\n+CPIN: READY\r\n", 1)
    [response, urc] = events
    assert response.final == "+CME ERROR: 13"
    assert response.error == AtError("cme", 13, "SIM failure", "+CME ERROR: 13")
    assert str(response.error) == "SIM failure (+CME ERROR: 13)"
    assert urc == Urc("+CPIN", "+CPIN: READY")


@pytest.mark.parametrize(
    ("line", "kind", "code", "text"),
    [
        ("+CME ERROR: 13", "cme", 13, "SIM failure"),  # ISS#1
        ("+CME ERROR: SIM failure", "cme", 13, "SIM failure"),  # ISS#3 verbose
        ("+CME ERROR: SIM busy", "cme", 14, "SIM busy"),  # ISS#3
        ("+CME ERROR: 16", "cme", 16, "incorrect password"),
        ("+CME ERROR: 313", "cme", 313, "SIM failure"),  # ISS#5: CMS number in a CME line
        ("+CMEERROR:10", "cme", 10, "SIM not inserted"),  # the manual's space-less print
        ("+CMS ERROR: 304", "cms", 304, "Invalid PDU mode parameter"),  # §28.4 example
        ("+CMS ERROR: 9999", "cms", 9999, "unknown CMS error 9999"),
        ("+CME ERROR: some new text", "cme", None, "some new text"),
        ("ERROR", "error", None, None),
        ("NO CARRIER", "no_carrier", None, None),
    ],
)
def test_final_error_codes(line: str, kind: str, code: int | None, text: str | None) -> None:
    events = exchange(AtCommand("AT+CPIN?"), echo("AT+CPIN?") + wire(line))
    [response] = events
    assert response.final == line
    assert not response.ok
    assert response.error.kind == kind
    assert response.error.code == code
    if text is not None:
        assert response.error.text == text


def test_error_tables_are_the_manuals() -> None:
    assert len(MQTT_ERRORS) == 36 and set(MQTT_ERRORS) == set(range(36))
    assert MQTT_ERRORS[32] == "handshake fail" and MQTT_ERRORS[34] == "open session failed"
    assert set(SOCKET_ERRORS) == set(range(13)) and SOCKET_ERRORS[3] == "Wrong parameter"
    assert CME_ERRORS[151] == "AT command timeout" and CMS_ERRORS[500] == "unknown error"
    assert final_error("OK") is None
    assert final_error("+CPIN: READY") is None


def test_information_lines_without_prefix() -> None:
    # LOG-AZ: AT+SIMCOMATI's block, including the key-less second revision line.
    block = [
        "Manufacturer: SIMCOM INCORPORATED",
        "Model: A7670G-LLSE",
        "Revision: A124B01A7670M7",
        "A7670M7_B01V01_240722",
        "IMEI:",
    ]
    reply = echo("AT+SIMCOMATI") + CRLF + "\r\n".join(block).encode() + CRLF + wire("OK")
    [response] = exchange(AtCommand("AT+SIMCOMATI"), reply)
    assert response.lines == tuple(block)
    assert response.ok


def test_line_ends_lf_only_and_cr_only() -> None:
    for sep in (b"\n", b"\r"):
        reply = b"AT+CSQ" + sep + b"+CSQ: 27,99" + sep + sep + b"OK" + sep
        assert exchange(AtCommand("AT+CSQ"), reply) == [
            AtResponse(AtCommand("AT+CSQ"), ("+CSQ: 27,99",), "OK")
        ]


def test_submit_rejects_lines_that_are_not_one_command() -> None:
    engine = AtEngine()
    with pytest.raises(ValueError, match="CR or LF"):
        engine.submit(AtCommand("AT\rAT"))
    with pytest.raises(ValueError, match="start with 'AT'"):
        engine.submit(AtCommand("CSQ"))
    with pytest.raises(ValueError, match="empty data"):
        engine.submit(AtCommand("AT+CMQTTTOPIC=0,0", data=b""))
    assert engine.pending == 0


def test_command_prefix() -> None:
    assert command_prefix("AT+CPIN?") == "+CPIN"
    assert command_prefix('at+cmqttconnect=0,"tcp://h:1883",60,1') == "+CMQTTCONNECT"
    assert command_prefix("ATE0") is None
    assert command_prefix("AT") is None


# ---------------------------------------------------------------- queue, URCs, boot


def test_one_command_in_flight_queue_behind() -> None:
    engine = AtEngine()
    engine.submit(AtCommand("AT+CSQ"))
    engine.submit(AtCommand("AT+CEREG?"))
    assert engine.outgoing(0) == b"AT+CSQ\r"
    assert engine.busy and engine.pending == 1
    assert engine.outgoing(0) == b""  # nothing until the final result code
    [first] = engine.receive(wire("+CSQ: 27,99", "OK"), 0.1)
    assert first.command.line == "AT+CSQ"
    assert not engine.busy
    assert engine.outgoing(0.1) == b"AT+CEREG?\r"
    [second] = engine.receive(wire("+CEREG: 0,1", "OK"), 0.2)
    assert second == AtResponse(AtCommand("AT+CEREG?"), ("+CEREG: 0,1",), "OK")


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["*ATREADY: 1", "+CPIN: READY", "SMS DONE", "PB DONE"]))
)
def test_boot_urcs_in_any_order(order: tuple[str, ...]) -> None:
    engine = AtEngine()
    events = engine.receive(wire(*order), 0)
    assert events == [Urc(line.split(":")[0], line) for line in order]
    assert engine.stats.urcs == 4 and engine.stats.garbage_lines == 0


def test_boot_probe_then_atready() -> None:
    # LOG-AZ: the host repeats AT while the module boots; *ATREADY: 1 arrives, then OK.
    engine = AtEngine()
    send(engine, AtCommand("AT", timeout_s=1.0))
    [timeout] = engine.poll(1.0)
    assert timeout.final == "TIMEOUT" and timeout.error.kind == "timeout"
    send(engine, AtCommand("AT", timeout_s=1.0), now=1.0)
    events = engine.receive(wire("*ATREADY: 1") + echo("AT") + wire("OK"), 1.5)
    assert events == [Urc("*ATREADY", "*ATREADY: 1"), AtResponse(AtCommand("AT", 1.0), (), "OK")]


def test_cgdcont_with_urcs_between_echo_and_ok() -> None:
    # ISS#1: +CGEV: EPS PDN ACT 1 and SMS DONE inside AT+CGDCONT=1,"IP","igprs.claro.com.ar".
    line = 'AT+CGDCONT=1,"IP","igprs.claro.com.ar"'
    reply = echo(line) + wire("+CGEV: EPS PDN ACT 1", "SMS DONE", "OK")
    assert exchange(AtCommand(line), reply) == [
        Urc("+CGEV", "+CGEV: EPS PDN ACT 1"),
        Urc("SMS DONE", "SMS DONE"),
        AtResponse(AtCommand(line), (), "OK"),
    ]


def test_write_of_registration_command_leaves_its_urcs_urcs() -> None:
    engine = AtEngine()
    send(engine, AtCommand('AT+CPIN="1234"'))
    events = engine.receive(echo('AT+CPIN="1234"') + wire("OK", "+CPIN: READY"), 0.1)
    assert events == [
        AtResponse(AtCommand('AT+CPIN="1234"'), (), "OK"),
        Urc("+CPIN", "+CPIN: READY"),
    ]
    send(engine, AtCommand("AT+CEREG=2"))
    events = engine.receive(wire('+CEREG: 1,"230A","A7B1C03",7', "OK"), 0.2)
    assert events[0] == Urc("+CEREG", '+CEREG: 1,"230A","A7B1C03",7')
    assert events[1].lines == ()


def test_unsolicited_garbage_is_reported_not_dropped() -> None:
    engine = AtEngine()
    events = engine.receive(wire("hello", "OK"), 0)
    assert events == [Urc("", "hello"), Urc("", "OK")]
    assert engine.stats.garbage_lines == 2


def test_overlong_line_is_cut_and_counted() -> None:
    engine = AtEngine()
    send(engine, AtCommand("AT+CSQ"))
    events = engine.receive(b"x" * (MAX_LINE + 10) + wire("+CSQ: 27,99", "OK"), 0.1)
    assert events == [AtResponse(AtCommand("AT+CSQ"), ("+CSQ: 27,99",), "OK")]
    assert engine.stats.overlong_lines == 1


def test_ate0_updates_echo_belief() -> None:
    engine = AtEngine()
    send(engine, AtCommand("ATE0"))
    engine.receive(echo("ATE0") + wire("OK"), 0.1)
    assert engine.echo_expected is False
    send(engine, AtCommand("ATE1"))
    engine.receive(wire("OK"), 0.2)
    assert engine.echo_expected is True


# ---------------------------------------------------------------- result-URC commands

CONNECT = AtCommand(
    'AT+CMQTTCONNECT=0,"tcp://broker.example:1883",60,1',
    timeout_s=30.0,
    result_urc="+CMQTTCONNECT",
)


def test_cmqttconnect_with_pb_done_and_sms_done_interleaved() -> None:
    # LOG-AZ: PB DONE and SMS DONE between the echo and OK, result line after OK.
    engine = AtEngine()
    send(engine, CONNECT)
    events = engine.receive(echo(CONNECT.line) + wire("PB DONE", "SMS DONE", "OK"), 1)
    assert events == [Urc("PB DONE", "PB DONE"), Urc("SMS DONE", "SMS DONE")]
    assert engine.busy
    assert engine.poll(20.0) == []  # OK came at 1 s: the result may take 30 s more
    [response] = engine.receive(wire("+CMQTTCONNECT: 0,0"), 25.0)
    assert response == AtResponse(CONNECT, (), "OK", "+CMQTTCONNECT: 0,0")
    assert response.ok


@pytest.mark.parametrize(("err", "text"), [(32, "handshake fail"), (34, "open session failed")])
def test_cmqttconnect_result_error(err: int, text: str) -> None:
    line = f"+CMQTTCONNECT: 0,{err}"
    [response] = exchange(CONNECT, echo(CONNECT.line) + wire("OK", line))
    assert response.final == "OK"
    assert response.error == AtError("result", err, text, line)


def test_cmqttpub_result_then_error() -> None:
    pub = AtCommand("AT+CMQTTPUB=0,1,60", result_urc="+CMQTTPUB")
    [response] = exchange(pub, wire("+CMQTTPUB: 0,11", "ERROR"))
    assert response.final == "ERROR"
    assert response.result_line == "+CMQTTPUB: 0,11"
    assert response.error == AtError("result", 11, "no connection", "+CMQTTPUB: 0,11")


def test_cmqttdisc_result_before_ok() -> None:
    disc = AtCommand("AT+CMQTTDISC=0,120", result_urc="+CMQTTDISC")
    [response] = exchange(disc, wire("+CMQTTDISC: 0,0", "OK"))
    assert response == AtResponse(disc, (), "OK", "+CMQTTDISC: 0,0")


def test_cmqttdisc_query_is_not_a_result() -> None:
    # LOG-AZ: the query lists both clients' states; state 1 (disconnected) is no error.
    query = AtCommand("AT+CMQTTDISC?")
    reply = echo(query.line) + wire("+CMQTTDISC: 0,0") + b"+CMQTTDISC: 1,1\r\n" + wire("OK")
    [response] = exchange(query, reply)
    assert response.lines == ("+CMQTTDISC: 0,0", "+CMQTTDISC: 1,1") and response.ok


def test_cmqttrel_client_not_acquired() -> None:
    # LOG-AZ: AT+CMQTTREL=0 / +CMQTTREL: 0,20 / ERROR.
    rel = AtCommand("AT+CMQTTREL=0")
    [response] = exchange(rel, echo(rel.line) + wire("+CMQTTREL: 0,20", "ERROR"))
    assert response.lines == ("+CMQTTREL: 0,20",)
    assert response.error == AtError("result", 20, "client not acquired", "+CMQTTREL: 0,20")


def test_cmqttstart_and_netopen() -> None:
    start = AtCommand("AT+CMQTTSTART", timeout_s=12.0, result_urc="+CMQTTSTART")
    assert exchange(start, echo(start.line) + wire("OK", "+CMQTTSTART: 0"))[0].ok
    netopen = AtCommand("AT+NETOPEN", timeout_s=120.0, result_urc="+NETOPEN")
    [bad] = exchange(netopen, wire("OK", "+NETOPEN: 1"))
    assert bad.error == AtError("result", 1, "Network failure", "+NETOPEN: 1")
    [already] = exchange(netopen, wire("+IPERROR: Network is already opened", "ERROR"))
    assert already.error.text == "Network is already opened"


def test_cipopen_udp_misuse() -> None:
    # ISS#8: +CIPOPEN: 1,3 / ERROR  (3 = Wrong parameter, §15.3.2)
    line = 'AT+CIPOPEN=1,"UDP","10.0.0.1",12345'
    [response] = exchange(AtCommand(line, result_urc="+CIPOPEN"), wire("+CIPOPEN: 1,3", "ERROR"))
    assert response.error == AtError("result", 3, "Wrong parameter", "+CIPOPEN: 1,3")


def test_result_urc_timeout() -> None:
    engine = AtEngine()
    send(engine, CONNECT)
    assert engine.receive(wire("OK"), 1.0) == []
    assert engine.poll(30.9) == []
    [response] = engine.poll(31.0)
    assert response.final == "TIMEOUT" and response.error.kind == "timeout"
    assert "+CMQTTCONNECT" in response.error.text
    assert "broker.example" not in response.error.text  # parameters (passwords) stay out
    # the late result is a URC, not an answer to anything else
    assert engine.receive(wire("+CMQTTCONNECT: 0,0"), 40) == [
        Urc("+CMQTTCONNECT", "+CMQTTCONNECT: 0,0")
    ]


# ---------------------------------------------------------------- timeouts and resets


def test_timeout_then_next_command_goes() -> None:
    engine = AtEngine()
    engine.submit(AtCommand("AT+COPS?", timeout_s=60.0))
    engine.submit(AtCommand("AT+CSQ"))
    engine.outgoing(0)
    assert engine.poll(59.9) == []
    [response] = engine.poll(60.0)
    assert response.command.line == "AT+COPS?" and response.final == "TIMEOUT"
    assert engine.stats.timeouts == 1
    assert engine.outgoing(60.0) == b"AT+CSQ\r"


def test_late_answer_after_timeout_is_not_taken_by_next_command() -> None:
    engine = AtEngine()
    send(engine, AtCommand("AT+CSQ"))
    assert engine.receive(echo("AT+CSQ"), 0.1) == []  # module echoes, then goes quiet
    [timeout] = engine.poll(9.0)
    assert timeout.final == "TIMEOUT"
    send(engine, AtCommand("AT+CEREG?"), now=9.0)
    late = wire("+CSQ: 27,99", "OK")  # the first command's answer, late
    events = engine.receive(late + echo("AT+CEREG?") + wire("+CEREG: 0,1", "OK"), 9.5)
    assert events[:2] == [Urc("+CSQ", "+CSQ: 27,99"), Urc("", "OK")]
    assert events[2] == AtResponse(AtCommand("AT+CEREG?"), ("+CEREG: 0,1",), "OK")
    assert engine.stats.stale_lines == 2  # the late answer's line and its OK


def test_stale_guard_gives_up_when_module_does_not_echo() -> None:
    engine = AtEngine(echo_expected=True)
    send(engine, AtCommand("AT"))
    engine.poll(9.0)
    send(engine, AtCommand("AT"), now=9.0)
    engine.receive(wire("OK"), 9.1)  # no echo: taken as the late answer
    [second] = engine.poll(18.0)
    assert second.final == "TIMEOUT"
    assert engine.echo_expected is False
    send(engine, AtCommand("AT"), now=18.0)
    [third] = engine.receive(wire("OK"), 18.1)
    assert third.ok


def test_abort_all_ends_everything_with_reset() -> None:
    engine = AtEngine()
    engine.submit(AtCommand("AT+CSQ"))
    engine.submit(AtCommand("AT+CPSI?"))
    engine.outgoing(0)
    engine.receive(b"+CSQ: 2", 0.1)  # partial line, lost with the module
    ended = engine.abort_all("module reset (AT+CRESET)")
    assert [r.command.line for r in ended] == ["AT+CSQ", "AT+CPSI?"]
    assert all(r.error == AtError("reset", None, "module reset (AT+CRESET)") for r in ended)
    assert not engine.busy and engine.pending == 0
    assert engine.outgoing(1) == b""


# ---------------------------------------------------------------- prompts and data


def test_topic_prompt_releases_data_exactly_once() -> None:
    engine = AtEngine()
    topic = AtCommand("AT+CMQTTTOPIC=0,9", data=b"simcommsg")
    send(engine, topic)
    assert engine.receive(echo(topic.line) + b"\r\n>", 0.1) == []
    assert engine.receive(b" ", 0.2) == []  # the prompt's space in a later read
    assert engine.outgoing(0.2) == b"simcommsg"
    assert engine.outgoing(0.3) == b""
    [response] = engine.receive(wire("OK"), 0.4)
    assert response == AtResponse(topic, (), "OK")
    assert engine.stats.prompts == 1


def test_no_data_before_prompt_and_error_instead_of_prompt() -> None:
    engine = AtEngine()
    topic = AtCommand("AT+CMQTTTOPIC=0,9", data=b"simcommsg")
    send(engine, topic)
    assert engine.outgoing(0.1) == b""
    [response] = engine.receive(wire("+CMQTTTOPIC: 0,11", "ERROR"), 0.2)
    assert response.error.code == 11
    assert engine.outgoing(0.3) == b""


def test_sub_with_prompt_and_result() -> None:
    # LOG-AZ: AT+CMQTTSUB=0,39,0,0 / >devices/MyDevice/messages/devicebound/# / OK / +CMQTTSUB: 0,0
    topic = b"devices/MyDevice/messages/devicebound/#"
    sub = AtCommand("AT+CMQTTSUB=0,39,0,0", data=topic, result_urc="+CMQTTSUB")
    engine = AtEngine()
    send(engine, sub)
    assert engine.receive(echo(sub.line) + b"\r\n>", 0.1) == []
    assert engine.outgoing(0.1) == topic
    [response] = engine.receive(wire("OK", "+CMQTTSUB: 0,0"), 0.5)
    assert response.ok and response.result_line == "+CMQTTSUB: 0,0"


def test_cmgs_prompt_with_echoed_text() -> None:
    # §9.2.13: AT+CMGS="13012832788" / >ABCD<ctrl-Z> / +CMGS: 46 / OK; the module echoes
    # the text while ATE1 is on. The text here even holds a line "OK".
    cmgs = AtCommand('AT+CMGS="13012832788"', timeout_s=40.0, data=b"ABCD\r\nOK\x1a")
    engine = AtEngine()
    send(engine, cmgs)
    engine.receive(echo(cmgs.line) + b"\r\n> ", 0.1)
    assert engine.outgoing(0.1) == b"ABCD\r\nOK\x1a"
    [response] = engine.receive(b"ABCD\r\nOK\x1a" + wire("+CMGS: 46", "OK"), 3.0)
    assert response == AtResponse(cmgs, ("+CMGS: 46",), "OK")
    assert engine.stats.data_echoes == 2


def test_cmgs_without_data_echo() -> None:
    cmgs = AtCommand('AT+CMGS="+10011"', data=b"Hello\x1a")
    engine = AtEngine(echo_expected=False)
    send(engine, cmgs)
    engine.receive(b"\r\n> ", 0.1)
    engine.outgoing(0.1)
    [response] = engine.receive(wire("+CMGS: 47", "OK"), 3.0)
    assert response.lines == ("+CMGS: 47",) and response.ok


def test_cmgs_failure() -> None:
    cmgs = AtCommand('AT+CMGS="+10011"', data=b"Hi\x1a")
    engine = AtEngine()
    send(engine, cmgs)
    engine.receive(b"\r\n> ", 0.1)
    engine.outgoing(0.1)
    [response] = engine.receive(wire("+CMS ERROR: 331"), 3.0)
    assert response.error == AtError("cms", 331, "no network service", "+CMS ERROR: 331")


# ---------------------------------------------------------------- SMS bodies

# The real A7670 of [ISS#7], PDU mode: `+CMGRD: 0,"",30` and its PDU (38 octets: 7 of SMSC
# address after their length octet, then the 30 the header announced).
ISS7_HEADER = '+CMGRD: 0,"",30'
ISS7_PDU = "07914346220050F0040B914326764060F60000524072319385800C31D98C062ACFE961F21B04"
# The manual's text-mode example with AT+CSDH=1 (§9.2.12): an SMS-SUBMIT, <length> 11.
MANUAL_SUBMIT = '+CMGR: "STO UNSENT","+10011",,145,17,0,0,167,"+8613800100500",145,11'


def csdh_deliver(length: int, *, dcs: int = 0, fo: int = 4) -> str:
    """A text-mode SMS-DELIVER header with AT+CSDH=1 (§9.2.12 form 1)."""
    return (
        '+CMGR: "REC UNREAD","+447700900123",,"25/04/27,13:44:52+08",'
        f'145,{fo},0,{dcs},"+447785016005",145,{length}'
    )


def test_cmgrd_pdu_of_a_real_module() -> None:
    [response] = exchange(
        AtCommand("AT+CMGRD=1"), echo("AT+CMGRD=1") + wire(ISS7_HEADER, ISS7_PDU, "OK")
    )
    assert response.ok and response.lines == (ISS7_HEADER,)
    assert response.data == (SmsData(ISS7_HEADER, ISS7_PDU.encode(), "pdu"),)


def test_manual_text_mode_example_with_csdh() -> None:
    reply = wire(f"{MANUAL_SUBMIT}\r\nHello World", "OK")  # header<CR><LF>data, one block
    [response] = exchange(AtCommand("AT+CMGR=1"), reply)
    assert response.ok
    assert response.data == (SmsData(MANUAL_SUBMIT, b"Hello World", "length"),)


HOSTILE = [
    b"OK",
    b"ERROR",
    b"+CME ERROR: 13",
    b"hi\r\nOK\r\n+CMQTTRXSTART: 0,3,5\r\n+CMQTTRXTOPIC: 0,3\r\nabc",
    b'+CMTI: "SM",9\n+CMQTTCONNLOST: 0,1\rERROR',
    b"",
    b"  spaced  ",
    b"\r\n\r\n",
]


@pytest.mark.parametrize("body", HOSTILE)
def test_text_mode_body_is_data_by_its_length_whatever_it_says(body: bytes) -> None:
    header = csdh_deliver(len(body))
    engine = AtEngine()
    send(engine, AtCommand("AT+CMGR=1"))
    stream = echo("AT+CMGR=1") + wire(header) + body + CRLF + wire("OK")
    events = engine.receive(stream, 0.1)
    assert events == [
        AtResponse(AtCommand("AT+CMGR=1"), (header,), "OK", None, None,
                   (SmsData(header, body, "length"),))
    ]  # fmt: skip
    assert engine.stats.urcs == engine.stats.garbage_lines == 0


def test_ucs2_and_udh_text_bodies_are_twice_their_length_in_hex() -> None:
    hex_body = "4F60597D003100320033"  # SMS-AN p.10: 你好123 in UCS2, <length> 10 octets
    header = csdh_deliver(10, dcs=8)
    [response] = exchange(AtCommand("AT+CMGR=2"), wire(f"{header}\r\n{hex_body}", "OK"))
    assert response.data[0].data == hex_body.encode() and response.ok
    header = csdh_deliver(3, fo=0x44)  # a user-data header: shown as hex too
    [response] = exchange(AtCommand("AT+CMGR=2"), wire(f"{header}\r\n050003", "OK"))
    assert response.data[0].data == b"050003"


@pytest.mark.parametrize("body", HOSTILE[:5])
def test_pdu_mode_listing_hostile_text_inside_stays_hex(body: bytes) -> None:
    """AT+CMGL=4 in PDU mode: each header, then its PDU line, nothing else."""
    lines = []
    for index in (1, 2):
        lines += [f'+CMGL: {index},0,"",30', ISS7_PDU]
    [response] = exchange(AtCommand("AT+CMGL=4"), wire(*lines, "OK"))
    assert [d.header for d in response.data] == ['+CMGL: 1,0,"",30', '+CMGL: 2,0,"",30']
    assert all(d.framing == "pdu" and d.ok for d in response.data)


def test_unframed_text_body_is_held_as_data_until_the_deadline() -> None:
    """AT+CSDH=0: the body has no length. Nothing after the header is parsed: not the fake
    OK, not the fake MQTT message; the answer ends at the deadline with all of it."""
    header = '+CMGR: "REC UNREAD","+447700900999",,"25/04/27,13:44:52+08"'
    body = b"x\r\nOK\r\n" + rx(b"cmd/x", b"RTL")
    engine = AtEngine()
    send(engine, AtCommand("AT+CMGR=1"))
    assert engine.receive(wire(header) + body + wire("OK"), 0.5) == []
    assert engine.busy
    [response] = engine.poll(9.0)
    assert response.error.kind == "unframed" and "AT+CMGR" in response.error.text
    [data] = response.data
    assert data.framing == "unframed" and data.data.startswith(b"x\r\nOK")
    assert engine.stats.mqtt_messages == 0 and engine.stats.urcs == 0
    send(engine, AtCommand("AT+CSQ"), now=9.0)
    [after] = engine.receive(wire("+CSQ: 20,99", "OK"), 9.1)
    assert after.ok and after.lines == ("+CSQ: 20,99",)


@pytest.mark.parametrize(
    ("pdu", "why"),
    [("0791447758", "announced"), ("OK", "hexadecimal"), ("07914346220050F0040B91ZZ", "hex")],
)
def test_a_pdu_that_does_not_match_its_header_is_held_not_parsed(pdu: str, why: str) -> None:
    engine = AtEngine()
    send(engine, AtCommand("AT+CMGR=1"))
    events = engine.receive(wire(ISS7_HEADER.replace("RD", "R"), pdu, "OK") + wire("OK"), 0.1)
    assert events == []
    [response] = engine.poll(9.0)
    assert response.error.kind == "unframed" and why in response.data[0].problem


def test_routed_sms_urc_in_pdu_and_text_mode() -> None:
    engine = AtEngine()
    header = '+CMT: "",30'
    [urc] = engine.receive(wire(header, ISS7_PDU), 0)
    assert urc == Urc("+CMT", header, SmsData(header, ISS7_PDU.encode(), "pdu"))
    text = '+CMT: "+447700900123",,"25/04/27,13:44:52+08",145,4,0,0,"+447785016005",145,5'
    [urc] = engine.receive(wire(text) + b"OK\r\nX" + CRLF, 1)
    assert urc.data == SmsData(text, b"OK\r\nX", "length")


def test_late_cmgr_answer_after_a_timeout_is_still_framed() -> None:
    """The body of an SMS header is data wherever the header arrives: here late, while the
    next command is in flight."""
    engine = AtEngine(echo_expected=False)
    send(engine, AtCommand("AT+CMGR=1"))
    [timeout] = engine.poll(9.0)
    assert timeout.final == "TIMEOUT"
    send(engine, AtCommand("AT+CSQ"), now=9.0)
    body = b"OK\r\n+CSQ: 1,1"
    stream = wire(csdh_deliver(len(body))) + body + CRLF + wire("OK", "+CSQ: 20,99", "OK")
    events = engine.receive(stream, 9.1)
    late = [e for e in events if isinstance(e, Urc)]
    assert late[0].data is not None and late[0].data.data == body
    [response] = responses(events)
    assert response.lines == ("+CSQ: 20,99",) and response.ok


def test_the_sms_data_state_ends_with_a_timeout() -> None:
    """Issue 10 item 13: "next line is SMS data" survived a timeout. A body cut by the
    timeout is held as data for a short window; the next command's answer is its own."""
    engine = AtEngine(echo_expected=False)
    send(engine, AtCommand("AT+CMGR=1"))
    assert engine.receive(wire(ISS7_HEADER.replace("RD", "R")), 0.1) == []
    assert engine.poll(9.0)[0].final == "TIMEOUT"
    send(engine, AtCommand("AT+CSQ"), now=9.0 + UNFRAMED_URC_S)
    events = engine.receive(wire("+CSQ: 20,99", "OK"), 9.0 + UNFRAMED_URC_S)
    assert responses(events)[0].lines == ("+CSQ: 20,99",)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (ISS7_HEADER, ("pdu", 30)),
        ('+CMGL: 3,1,"",22', ("pdu", 22)),
        ("+CDS: 25", ("pdu", 25)),
        (MANUAL_SUBMIT, ("length", 11)),
        (csdh_deliver(70, dcs=8), ("length", 140)),
        ('+CMGR: "REC READ",6,12,,,"25/04/27,13:44:52+08","25/04/27,13:44:55+08",0', ("none", 0)),
        ('+CMGL: ("REC UNREAD","REC READ","STO UNSENT","STO SENT","ALL")', ("none", 0)),
        ('+CMGR: "REC UNREAD","+1",,"x"', ("unframed", 0)),
        ("+CMGR: 0,,9999", ("unframed", 0)),
        ("+CMT: x", ("unframed", 0)),
    ],
)
def test_sms_framing_of_each_header_form(header: str, expected: tuple[str, int]) -> None:
    name = header.split(":")[0]
    assert sms_framing(name, header) == expected


# ---------------------------------------------------------------- MQTT receive


def rx(topic: bytes, payload: bytes, *, chunks: int = 1, space: str = " ") -> bytes:
    """+CMQTTRXSTART..END as §18.4 frames it, payload split into `chunks` pieces."""
    out = wire(f"+CMQTTRXSTART:{space}0,{len(topic)},{len(payload)}")
    out += wire(f"+CMQTTRXTOPIC:{space}0,{len(topic)}") + topic + CRLF
    if payload:
        size = -(-len(payload) // chunks)
        for k in range(0, len(payload), size):
            piece = payload[k : k + size]
            out += wire(f"+CMQTTRXPAYLOAD:{space}0,{len(piece)}") + piece + CRLF
    return out + wire(f"+CMQTTRXEND:{space}0")


def test_rx_app_note_example_without_spaces() -> None:
    # MQTT-AN p.13 prints "+CMQTTRXSTART:0,9,60" (no space after the colon).
    payload = b"012345678901234567890123456789012345678901234567890123456789"
    events = AtEngine().receive(rx(b"simcommsg", payload, space=""), 0)
    assert events == [MqttMessage(0, "simcommsg", payload)]


def test_rx_zero_length_payload_has_no_rxpayload() -> None:
    # MQTT-AN p.21: +CMQTTRXSTART:0,9,0 / +CMQTTRXTOPIC:0,9 / topic / +CMQTTRXEND:0
    events = AtEngine().receive(rx(b"simcommsg", b""), 0)
    assert events == [MqttMessage(0, "simcommsg", b"")]


def test_rx_payload_with_line_breaks_nul_and_result_codes_is_raw() -> None:
    payload = b'OK\r\n+CME ERROR: 13\r\n\x00\r+CMTI: "SM",1\nERROR\r\n> '
    engine = AtEngine()
    send(engine, AtCommand("AT+CSQ"))
    stream = echo("AT+CSQ") + rx(b"a/\r\nb", payload, chunks=3) + wire("+CSQ: 20,99", "OK")
    events = engine.receive(stream, 0.1)
    assert events == [
        MqttMessage(0, "a/\r\nb", payload),
        AtResponse(AtCommand("AT+CSQ"), ("+CSQ: 20,99",), "OK"),
    ]


def test_rx_split_payload_like_lilygo_fork() -> None:
    # LGFORK: +CMQTTRXSTART: 0,17,2039 with a first RXPAYLOAD chunk of 1500 bytes.
    payload = bytes(range(256)) * 7 + b"z" * (2039 - 1792)
    topic = b"/Sim7600/user/get"
    stream = wire("+CMQTTRXSTART: 0,17,2039", "+CMQTTRXTOPIC: 0,17") + topic + CRLF
    stream += wire("+CMQTTRXPAYLOAD: 0,1500") + payload[:1500] + CRLF
    stream += wire("+CMQTTRXPAYLOAD: 0,539") + payload[1500:] + CRLF
    stream += wire("+CMQTTRXEND: 0")
    assert AtEngine().receive(stream, 0) == [MqttMessage(0, topic.decode(), payload)]


@pytest.mark.parametrize(
    "stream",
    [
        wire("+CMQTTRXEND: 0"),
        wire("+CMQTTRXSTART: 0,3,5", "+CMQTTRXTOPIC: 0,3") + b"a/b" + wire("+CMQTTRXEND: 0"),
        wire("+CMQTTRXTOPIC: 0,2") + b"OK" + CRLF,
        wire("+CMQTTRXSTART: x"),
        wire("+CMQTTRXPAYLOAD: 0,99999"),
    ],
)
def test_rx_inconsistent_sequences_are_reported(stream: bytes) -> None:
    engine = AtEngine()
    events = engine.receive(stream, 0)
    assert events and all(isinstance(e, Urc) and e.name == "" for e in events)
    assert "MQTT receive error" in events[0].line
    assert engine.stats.mqtt_rx_errors >= 1


def test_rx_after_incomplete_message_still_delivers_next() -> None:
    engine = AtEngine()
    events = engine.receive(wire("+CMQTTRXSTART: 0,3,1") + rx(b"t/x", b"1"), 0)
    assert urcs(events)[0].name == ""
    assert events[-1] == MqttMessage(0, "t/x", b"1")


# ---------------------------------------------------------------- URCs at every position

INSERTED_URCS = ['+CMTI: "SM",3', "SMS DONE", "+CGEV: EPS PDN ACT 1", "+CMQTTCONNLOST: 0,1"]
RESPONSES = [
    (AtCommand("AT+CSQ"), echo("AT+CSQ") + wire("+CSQ: 27,99", "OK")),
    (AtCommand("AT+CPIN?"), echo("AT+CPIN?") + wire("+CME ERROR: SIM busy")),
    (CONNECT, echo(CONNECT.line) + wire("OK", "+CMQTTCONNECT: 0,32")),
    (AtCommand("AT+CMQTTREL=0"), wire("+CMQTTREL: 0,20", "ERROR")),
]


@pytest.mark.parametrize("urc", INSERTED_URCS)
@pytest.mark.parametrize(("command", "reply"), RESPONSES, ids=lambda x: getattr(x, "line", ""))
def test_urc_at_every_byte_position(command: AtCommand, reply: bytes, urc: str) -> None:
    [baseline] = exchange(command, reply)
    expected_urc = Urc(urc.split(":")[0], urc)
    echo_end = len(command.line) if reply.startswith(command.line.encode()) else 0
    for pos in range(len(reply) + 1):
        events = exchange(command, reply[:pos] + wire(urc) + reply[pos:])
        assert [u for u in urcs(events) if u.name] == [expected_urc], pos
        assert all(r.command == command for r in responses(events)), pos
        if pos > reply.rindex(b"\r"):  # after the line that ends the command
            assert events == [baseline, expected_urc], pos
        elif pos == 0 or reply[pos - 1] in b"\r\n":
            # between lines, where a module puts its URCs: the answer is untouched
            assert events == [expected_urc, baseline], pos
        elif pos < echo_end:
            # an echo cut in two is two stray lines, but the answer is still this command's
            [response] = responses(events)
            assert (response.final, response.error) == (baseline.final, baseline.error), pos


# ---------------------------------------------------------------- properties

SESSION: list[tuple[AtCommand, list[bytes]]] = [
    (AtCommand("AT"), [wire("*ATREADY: 1") + echo("AT") + wire("OK")]),
    (AtCommand("AT+CPIN?"), [echo("AT+CPIN?") + wire("+CME ERROR: 13", "+CPIN: READY")]),
    (
        AtCommand('AT+CGDCONT=1,"IP","internet"'),
        [echo('AT+CGDCONT=1,"IP","internet"') + wire("+CGEV: EPS PDN ACT 1", "SMS DONE", "OK")],
    ),
    (CONNECT, [echo(CONNECT.line) + wire("PB DONE", "OK", "+CMQTTCONNECT: 0,0")]),
    (
        AtCommand("AT+CMQTTTOPIC=0,9", data=b"simcommsg"),
        [echo("AT+CMQTTTOPIC=0,9") + b"\r\n> ", wire("OK")],
    ),
    (
        AtCommand("AT+CMQTTPUB=0,1,60", result_urc="+CMQTTPUB"),
        [
            echo("AT+CMQTTPUB=0,1,60")
            + rx(b"cmd/x", b"go\r\nOK", chunks=2)
            + wire("OK")
            + wire("+CMQTTPUB: 0,0")
        ],
    ),
    (AtCommand("AT+CMGR=2"), [wire(ISS7_HEADER.replace("RD", "R"), ISS7_PDU, "OK")]),
    (AtCommand("AT+CMGR=3"), [wire(csdh_deliver(4)) + b"OK\r\n" + CRLF + wire("OK")]),
    (AtCommand("ATE0"), [echo("ATE0") + wire("OK")]),
    (AtCommand("AT+CSQ"), [wire("+CSQ: 27,99", "+CMQTTCONNLOST: 0,1", "OK") + rx(b"t", b"")]),
]


def drive(session, cut) -> tuple[list, list[bytes]]:
    """Run a session, feeding each reply segment in pieces chosen by `cut(segment)`."""
    engine = AtEngine()
    events: list = []
    written: list[bytes] = []
    now = 0.0
    for command, segments in session:
        engine.submit(command)
        for segment in segments:
            written.append(engine.outgoing(now))
            for piece in cut(segment):
                now += 0.01
                events += engine.receive(piece, now)
        written.append(engine.outgoing(now))
    return events, written


def test_session_events() -> None:
    events, written = drive(SESSION, lambda s: [s])
    assert [r.command.line for r in responses(events)] == [c.line for c, _ in SESSION]
    assert [r.ok for r in responses(events)] == [
        True,
        False,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
    ]
    assert b"simcommsg" in written
    assert [e for e in events if isinstance(e, MqttMessage)] == [
        MqttMessage(0, "cmd/x", b"go\r\nOK"),
        MqttMessage(0, "t", b""),
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_split_gives_the_same_events(data: st.DataObject) -> None:
    def cut(segment: bytes) -> list[bytes]:
        points = sorted(data.draw(st.sets(st.integers(0, len(segment)), max_size=8)))
        bounds = [0, *points, len(segment)]
        return [segment[a:b] for a, b in itertools.pairwise(bounds)]

    assert drive(SESSION, cut) == drive(SESSION, lambda s: [s])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.booleans())
def test_arbitrary_bytes_never_raise(chunks: list[bytes], echo_expected: bool) -> None:
    engine = AtEngine(echo_expected=echo_expected)
    for line in ("AT+CSQ", "AT+CMQTTTOPIC=0,3"):
        engine.submit(AtCommand(line, data=b"a/b" if "TOPIC" in line else None))
    now = 0.0
    for chunk in chunks:
        now += 1.0
        engine.outgoing(now)
        for event in engine.receive(chunk, now) + engine.poll(now):
            assert isinstance(event, AtResponse | Urc | MqttMessage)
    assert engine.stats.bytes_in == sum(map(len, chunks))
    engine.abort_all("end")
    assert not engine.busy and engine.pending == 0


_GARBAGE_LINE = st.text(alphabet="abcdefxyz 0123456789=#", min_size=1, max_size=12).filter(
    lambda s: s.strip()
)
_NOISE = st.lists(
    st.one_of(
        st.sampled_from([*INSERTED_URCS, "PB DONE", "*ATREADY: 1"]).map(lambda u: wire(u)),
        _GARBAGE_LINE.map(lambda g: wire(g)),
        st.just(rx(b"q/1", b"OK\r\n")),
    ),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_NOISE, min_size=6, max_size=6), st.booleans())
def test_responses_never_go_to_the_wrong_command(noise: list[list[bytes]], echoed: bool) -> None:
    # Two queued commands whose answers carry their own marks; URCs, MQTT messages and
    # garbage lines anywhere between the lines. Each response must carry its own answer.
    first = AtCommand("AT+CSQ")
    second = AtCommand("AT+CPSI?")
    answers = {
        first: [echo("AT+CSQ") if echoed else b"", wire("+CSQ: 11,99"), wire("OK")],
        second: [echo("AT+CPSI?") if echoed else b"", wire("+CPSI: LTE,Online"), wire("OK")],
    }
    engine = AtEngine()
    engine.submit(first)
    engine.submit(second)
    events: list = []
    noise_iter = iter(noise)
    for command in (first, second):
        assert engine.outgoing(0) == command.line.encode() + b"\r"
        for part in answers[command]:
            for blob in [*next(noise_iter), part]:
                events += engine.receive(blob, 0)
    got = responses(events)
    assert [r.command for r in got] == [first, second]
    assert "+CSQ: 11,99" in got[0].lines and "+CPSI: LTE,Online" not in got[0].lines
    assert "+CPSI: LTE,Online" in got[1].lines and "+CSQ: 11,99" not in got[1].lines
    assert all(r.ok for r in got)
    assert all(m == MqttMessage(0, "q/1", b"OK\r\n") for m in events if isinstance(m, MqttMessage))


# ---------------------------------------------------------------- issue 10 reproducers


def test_digit_like_result_code_is_not_a_number() -> None:
    """Fuzz reproducer: `+NETOPEN: ²` during AT+NETOPEN raised ValueError (isdigit/int)."""
    netopen = AtCommand("AT+NETOPEN", timeout_s=120.0, result_urc="+NETOPEN")
    engine = AtEngine()
    send(engine, netopen)
    events = engine.receive(wire("OK", "+NETOPEN: \u00b2", "+NETOPEN: \u0663", "+NETOPEN: 0"), 1)
    [response] = responses(events)
    assert response.ok and response.result_line == "+NETOPEN: 0"


def test_rx_chunks_past_the_announced_length_are_read_and_refused() -> None:
    """Fuzz reproducer: 100 chunks of 10 KB held 1 MB for a 1-byte payload."""
    engine = AtEngine()
    stream = wire("+CMQTTRXSTART: 0,3,1", "+CMQTTRXTOPIC: 0,3") + b"a/b" + CRLF
    for _ in range(100):
        stream += wire("+CMQTTRXPAYLOAD: 0,10240") + b"OK\r\n" * 2560 + CRLF
    stream += wire("+CMQTTRXEND: 0")
    events = engine.receive(stream, 0)
    assert not [e for e in events if isinstance(e, MqttMessage)]
    assert engine.held_bytes <= MAX_RX_PAYLOAD
    assert engine.stats.mqtt_rx_errors >= 1
    assert not any(u.line == "OK" for u in urcs(events))  # the chunks' bytes were not parsed


def test_rxstart_announcing_more_than_the_manual_allows_is_refused() -> None:
    events = AtEngine().receive(wire("+CMQTTRXSTART: 0,2000,99999"), 0)
    assert "MQTT receive error" in events[0].line


def test_after_ate0_a_late_query_answer_is_still_recognised() -> None:
    """Issue 10 item 8: without echo, a late answer carries the timed-out command's prefix;
    it and its OK are stale, and the next command gets its own answer."""
    engine = AtEngine()
    send(engine, AtCommand("ATE0"))
    engine.receive(echo("ATE0") + wire("OK"), 0.1)
    assert engine.echo_expected is False
    send(engine, AtCommand("AT+COPS?", timeout_s=9.0), now=1.0)
    [timeout] = engine.poll(10.0)
    assert timeout.final == "TIMEOUT"
    send(engine, AtCommand("AT+CPSI?"), now=10.0)
    late = wire('+COPS: 0,0,"vodafone UK",7', "OK")
    events = engine.receive(late + wire("+CPSI: LTE,Online", "OK"), 10.5)
    assert events[:2] == [Urc("+COPS", '+COPS: 0,0,"vodafone UK",7'), Urc("", "OK")]
    assert events[2] == AtResponse(AtCommand("AT+CPSI?"), ("+CPSI: LTE,Online",), "OK")
    assert engine.stats.stale_lines == 2


def test_a_late_prefix_is_forgotten_after_its_window() -> None:
    engine = AtEngine(echo_expected=False)
    send(engine, AtCommand("AT+COPS?"))
    engine.poll(9.0)
    engine.poll(30.0)  # the late answer's window (one more timeout) is over
    send(engine, AtCommand("AT+CGDCONT?"), now=30.0)
    [response] = engine.receive(wire('+COPS: 0,0,"x",7', "OK"), 30.1)
    assert response.ok  # no longer taken for a late answer


def test_a_queued_command_can_be_withdrawn_never_an_orphan() -> None:
    engine = AtEngine()
    first, second = AtCommand("AT+COPS?", timeout_s=60.0), AtCommand("AT+CSQ")
    engine.submit(first)
    engine.submit(second)
    engine.outgoing(0)
    assert engine.cancel(second) and not engine.cancel(first)  # sent: too late
    engine.receive(wire('+COPS: 0,0,"x",7', "OK"), 16.0)
    assert engine.outgoing(16.0) == b"" and engine.stats.cancelled == 1


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    line = 'AT+CMQTTCONNECT=0,"tcp://h:1883",60,1,"user","s3cret-pw"'
    command = AtCommand(line, result_urc="+CMQTTCONNECT")
    assert "s3cret" not in repr(command) and "s3cret" not in redact(line)
    assert redact(line) == 'AT+CMQTTCONNECT=0,"…",60,1,"…","…"'
    engine = AtEngine()
    send(engine, command)
    [timeout] = engine.poll(9.0)
    assert "s3cret" not in str(timeout.error) and "s3cret" not in repr(timeout)
    with pytest.raises(ValueError) as refused:
        engine.submit(AtCommand('AT+CPIN="1234"\rAT'))
    assert "1234" not in str(refused.value)


def test_an_answer_longer_than_the_bound_is_cut_and_says_so() -> None:
    engine = AtEngine()
    send(engine, AtCommand("AT+COPS=?", timeout_s=60.0))
    line = "+COPS: " + "x" * 4000
    events = engine.receive(wire(*[line] * (MAX_RESPONSE // 4000 + 5), "OK"), 1)
    [response] = responses(events)
    assert response.error.kind == "overflow" and "not kept" in response.error.text
    assert sum(map(len, response.lines)) <= MAX_RESPONSE
