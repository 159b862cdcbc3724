"""Operator commands by SMS: authenticated with a MAC over the command, a counter and the
time; replays and stale commands refused; counters kept across restarts; each command acted
on through the bus and answered by SMS.

The mission here is a stand-in that reacts to `OperatorCommand` the way the mission core
journals it (tests/test_mission_core.py checks the core itself): an abort is a transition
("abort", reason "operator abort (<source>)", action RTL), a hold a "hold" record, an
ignored request an "operator-ignored" record with the source.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.bus import Bus
from companion.mission.events import MissionEvent, Phase
from companion.mission.inputs import FallbackPin, OperatorAction, OperatorCommand
from companion.modem.operator_sms import (
    MAX_REFUSAL_ANSWERS,
    CommandAuthenticator,
    CounterStore,
    OperatorSms,
    SmsAuthError,
    load_key,
    main,
    sign_command,
)
from companion.modem.sms import SmsError, SmsMessage
from firmware_bridge.state import Battery, GpsInfo, Position, VehicleState

KEY = bytes.fromhex("8d2f5a1c7e3b9046d1a8c5f2e7b3094a6c1d8e2f5b7a9c3d0e4f6a8b1c2d3e4f")
DRONE = "skycourier-1"
OPERATOR = "+447700900123"
OTHER_OPERATOR = "+447700900124"
NOW = 1_767_225_600.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def authenticator(tmp_path: Path, clock: Clock, validity_s: float = 300.0) -> CommandAuthenticator:
    return CommandAuthenticator(
        key=KEY,
        drone_id=DRONE,
        counters=CounterStore(tmp_path / "counters.json"),
        validity_s=validity_s,
        clock=clock,
    )


def signed(counter: int, command: str, when: float = NOW, sender: str = OPERATOR) -> str:
    return sign_command(KEY, DRONE, sender, counter, int(when), command)


# -- authentication --------------------------------------------------------------------------


def test_the_mac_is_hmac_sha256_over_the_documented_fields() -> None:
    text = signed(42, "abort")
    counter, when, command, mac = text.split()
    message = f"skycourier-sms-v1\n{DRONE}\n447700900123\n42\n{int(NOW)}\nabort"
    assert mac == hmac.new(KEY, message.encode(), hashlib.sha256).hexdigest()[:32]
    assert (counter, when, command) == ("42", str(int(NOW)), "abort")


def test_a_signed_command_is_accepted_once(tmp_path: Path, clock: Clock) -> None:
    auth = authenticator(tmp_path, clock)
    verdict = auth.check(OPERATOR, signed(1, "hold"))
    assert verdict.command == "hold" and verdict.refusal is None
    replay = auth.check(OPERATOR, signed(1, "hold"))
    assert replay.command is None and replay.refusal == "replay: counter 1, last used 1"
    older = auth.check(OPERATOR, signed(0 + 1, "abort"))
    assert older.command is None


def test_a_captured_command_replayed_after_a_restart_is_refused(
    tmp_path: Path, clock: Clock
) -> None:
    captured = signed(7, "abort")
    assert authenticator(tmp_path, clock).check(OPERATOR, captured).command == "abort"
    # The daemon restarts: the counter comes back from disk.
    again = authenticator(tmp_path, clock).check(OPERATOR, captured)
    assert again.command is None and "replay" in (again.refusal or "")
    assert json.loads((tmp_path / "counters.json").read_text()) == {"447700900123": 7}


def test_a_command_older_than_its_validity_window_is_refused(tmp_path: Path, clock: Clock) -> None:
    auth = authenticator(tmp_path, clock, validity_s=300.0)
    text = signed(3, "land", when=NOW - 301)
    verdict = auth.check(OPERATOR, text)
    assert verdict.command is None and verdict.refusal == "stale: signed 301 s ago, valid 300 s"
    assert auth.counters.last(OPERATOR) == 0  # a refused command does not use its counter
    assert auth.check(OPERATOR, signed(3, "land", when=NOW - 299)).command == "land"


def test_a_command_from_the_future_is_refused(tmp_path: Path, clock: Clock) -> None:
    verdict = authenticator(tmp_path, clock).check(OPERATOR, signed(1, "abort", when=NOW + 600))
    assert verdict.command is None and "future" in (verdict.refusal or "")


@pytest.mark.parametrize(
    ("sender", "text", "why"),
    [
        (OPERATOR, signed(5, "abort").replace("abort", "land"), "MAC"),  # command changed
        (OPERATOR, "6" + signed(5, "abort")[1:], "MAC"),  # counter changed
        (OTHER_OPERATOR, signed(5, "abort"), "MAC"),  # signed for another operator's number
        (OPERATOR, sign_command(KEY, "skycourier-2", OPERATOR, 5, int(NOW), "abort"), "MAC"),
        (OPERATOR, sign_command(b"k" * 32, DRONE, OPERATOR, 5, int(NOW), "abort"), "MAC"),
        (OPERATOR, "abort", "expected"),
        (OPERATOR, "5 now abort 00", "time"),
        (OPERATOR, f"0 {int(NOW)} abort 00", "counter"),
        (OPERATOR, f"5 {int(NOW)} selfdestruct 00", "unknown command"),
    ],
)
def test_anything_but_the_exact_signed_text_is_refused(
    tmp_path: Path, clock: Clock, sender: str, text: str, why: str
) -> None:
    verdict = authenticator(tmp_path, clock).check(sender, text)
    assert verdict.command is None and why in (verdict.refusal or "")
    assert "8d2f5a" not in (verdict.refusal or "")  # never the key


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from([OPERATOR, "", "BANK", "+1"]))
def test_authentication_never_raises_and_never_accepts_garbage(text: str, sender: str) -> None:
    auth = CommandAuthenticator(
        key=KEY, drone_id=DRONE, counters=_MemoryCounters(), validity_s=300.0, clock=lambda: NOW
    )
    assert auth.check(sender, text).command is None


class _MemoryCounters(CounterStore):
    """Counters without a file, for the property test (a file per example is slow)."""

    def __init__(self) -> None:
        self._lock = __import__("threading").Lock()
        self._counters = {}

    def _write(self, counters: dict[str, int]) -> None:
        pass


def test_an_unwritable_counter_file_refuses_rather_than_risking_a_replay(
    tmp_path: Path, clock: Clock
) -> None:
    auth = authenticator(tmp_path, clock)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    auth.counters.path = blocker / "counters.json"  # the disk went away under it
    verdict = auth.check(OPERATOR, signed(1, "abort"))
    assert verdict.command is None and verdict.refusal == "the drone cannot record the counter"


def test_key_and_counter_file_errors_name_the_file_not_the_content(tmp_path: Path) -> None:
    key_file = tmp_path / "sms.key"
    key_file.write_text("s3cret not hex")
    with pytest.raises(SmsAuthError, match="hexadecimal") as error:
        load_key(key_file)
    assert "s3cret" not in str(error.value) and str(key_file) in str(error.value)
    key_file.write_text("abcd")
    with pytest.raises(SmsAuthError, match="at least 16"):
        load_key(key_file)
    with pytest.raises(SmsAuthError, match="cannot read"):
        load_key(tmp_path / "missing.key")
    counters = tmp_path / "counters.json"
    counters.write_text('{"447700900123": "x"}')
    with pytest.raises(SmsAuthError, match="counters"):
        CounterStore(counters)


def test_the_signing_tool_prints_what_the_drone_accepts(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "sms.key"
    key_file.write_text(KEY.hex() + "\n")
    args = ["sign", "--key-file", str(key_file), "--drone", DRONE, "--sender", OPERATOR]
    assert main([*args, "--counter", "9", "--time", str(int(NOW)), "status"]) == 0
    text = capsys.readouterr().out.strip()
    assert authenticator(tmp_path, clock).check(OPERATOR, text).command == "status"
    assert main([*args, "--counter", "0", "status"]) == 2
    # The same tool as `skycourier sms sign`.
    from companion.cli import main as skycourier

    assert skycourier(["sms", *args, "--counter", "10", "--time", str(int(NOW)), "abort"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.split()[:3] == ["10", str(int(NOW)), "abort"]


# -- acting and answering --------------------------------------------------------------------


class Answers:
    """The `send` of the operator handler: what it answered, to whom."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail = False

    def __call__(self, number: str, text: str) -> int:
        if self.fail:
            raise SmsError("no network service")
        self.sent.append((number, text))
        return len(self.sent)


class StandInMission:
    """Reacts to OperatorCommand as the core journals it (published on the bus)."""

    def __init__(self, bus: Bus, mission_id: str = "m-7", phase: Phase = Phase.CRUISE) -> None:
        self.bus = bus
        self.mission_id = mission_id
        self.phase = phase
        self.commands: list[OperatorCommand] = []
        self.silent = False
        bus.publish(MissionEvent(mission_id, phase, "enter"))
        bus.subscribe(OperatorCommand, self.on_command)

    def on_command(self, command: OperatorCommand) -> None:
        self.commands.append(command)
        if self.silent:
            return
        source = command.source
        if command.action is OperatorAction.ABORT:
            detail = {"reason": f"operator abort ({source})", "action": "RTL", "phase": "cruise"}
            self.bus.publish(MissionEvent(self.mission_id, Phase.ABORT, "abort", detail))
        elif command.action is OperatorAction.LAND:
            detail = {"reason": f"operator land ({source})", "action": "LAND", "phase": "cruise"}
            self.bus.publish(MissionEvent(self.mission_id, Phase.ABORT, "abort", detail))
        elif command.action is OperatorAction.HOLD:
            detail = {"reason": f"operator hold ({source})"}
            self.bus.publish(MissionEvent(self.mission_id, self.phase, "hold", detail))
        else:
            detail = {"request": "resume", "source": source, "why": "not holding"}
            self.bus.publish(MissionEvent(self.mission_id, self.phase, "operator-ignored", detail))


def handler(tmp_path: Path, clock: Clock, bus: Bus, answers: Answers) -> OperatorSms:
    return OperatorSms(
        bus=bus,
        authenticator=authenticator(tmp_path, clock),
        send=answers,
        drone_id=DRONE,
        answer_wait_s=0.05,
        clock=clock,
    )


def sms(text: str, sender: str = OPERATOR) -> SmsMessage:
    return SmsMessage(1, sender, "26/01/01,00:00:00+00", text)


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("abort", "skycourier-1 ABORT mission m-7: aborting, RTL (was in cruise)"),
        ("land", "skycourier-1 LAND mission m-7: aborting, LAND (was in cruise)"),
        ("hold", "skycourier-1 HOLD mission m-7: holding in cruise"),
        ("resume", "skycourier-1 RESUME mission m-7: not done: not holding"),
    ],
)
def test_each_command_acts_through_the_bus_and_is_answered(
    tmp_path: Path, clock: Clock, command: str, answer: str
) -> None:
    bus, answers = Bus(), Answers()
    mission = StandInMission(bus)
    operator = handler(tmp_path, clock, bus, answers)
    operator(sms(signed(1, command)))
    assert mission.commands == [OperatorCommand(OperatorAction(command), f"sms:{OPERATOR}")]
    assert answers.sent == [(OPERATOR, answer)]


def test_a_command_with_no_mission_flying_is_recorded_and_says_so(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    bus, answers = Bus(), Answers()
    seen: list[OperatorCommand] = []
    bus.subscribe(OperatorCommand, seen.append)
    operator = handler(tmp_path, clock, bus, answers)
    bus.publish(MissionEvent("m-6", Phase.DONE, "enter"))  # the last mission was delivered
    bus.publish(MissionEvent("m-6", Phase.DONE, "finished", {"outcome": "delivered"}))
    with caplog.at_level("WARNING"):
        operator(sms(signed(1, "abort")))
    assert answers.sent == [
        (OPERATOR, "skycourier-1 ABORT recorded, no mission flying: nothing done")
    ]
    assert seen and "no mission flying" in caplog.text and "counter 1" in caplog.text


def test_a_mission_that_does_not_answer_is_reported(tmp_path: Path, clock: Clock) -> None:
    bus, answers = Bus(), Answers()
    StandInMission(bus).silent = True
    handler(tmp_path, clock, bus, answers)(sms(signed(1, "hold")))
    [(_, text)] = answers.sent
    assert text.startswith("skycourier-1 HOLD sent to mission m-7, no answer in 0.05 s")


def test_status_is_answered_from_the_bus(tmp_path: Path, clock: Clock) -> None:
    bus, answers = Bus(), Answers()
    StandInMission(bus)
    bus.publish(
        VehicleState(
            wall_time=NOW - 2,
            armed=True,
            mode="GUIDED",
            position=Position(-35.363261, 149.165230, 614.0, 30.4),
            battery=Battery(remaining_pct=76),
            gps=GpsInfo(fix_type=3, satellites=10),
        )
    )
    handler(tmp_path, clock, bus, answers)(sms(signed(1, "STATUS")))
    [(number, text)] = answers.sent
    assert number == OPERATOR
    assert text == (
        "skycourier-1 STATUS; mission m-7 cruise (flying); GUIDED armed; "
        "30m -35.36326,149.16523; batt 76%; gps fix 3 10sat; 2s old"
    )
    assert len(text) <= 160


def test_a_replayed_command_is_refused_and_the_refusal_answered(
    tmp_path: Path, clock: Clock
) -> None:
    bus, answers = Bus(), Answers()
    mission = StandInMission(bus)
    operator = handler(tmp_path, clock, bus, answers)
    captured = signed(4, "abort")
    operator(sms(captured))
    operator(sms(captured))
    assert len(mission.commands) == 1
    assert answers.sent[-1] == (OPERATOR, "skycourier-1 refused: replay: counter 4, last used 4")
    assert operator.accepted == 1 and operator.refused == 1


def test_refusal_answers_are_rate_limited(tmp_path: Path, clock: Clock) -> None:
    bus, answers = Bus(), Answers()
    operator = handler(tmp_path, clock, bus, answers)
    for _ in range(MAX_REFUSAL_ANSWERS + 3):
        operator(sms("spoofed nonsense"))
    assert len(answers.sent) == MAX_REFUSAL_ANSWERS and operator.refused == MAX_REFUSAL_ANSWERS + 3


def test_parts_and_binary_messages_are_refused(tmp_path: Path, clock: Clock) -> None:
    bus, answers = Bus(), Answers()
    operator = handler(tmp_path, clock, bus, answers)
    operator(SmsMessage(1, OPERATOR, "", signed(1, "abort"), part=(9, 2, 1)))
    operator(SmsMessage(2, OPERATOR, "", signed(2, "abort"), binary=True))
    assert [t for _, t in answers.sent] == [
        "skycourier-1 refused: part 1 of 2 of a longer message: one SMS per command",
        "skycourier-1 refused: 8-bit data, not text",
    ]


def test_without_a_key_every_command_is_refused_saying_why(clock: Clock) -> None:
    bus, answers = Bus(), Answers()
    mission = StandInMission(bus)
    OperatorSms(bus=bus, authenticator=None, send=answers, drone_id=DRONE)(sms(signed(1, "abort")))
    assert mission.commands == []
    assert "no usable SMS key" in answers.sent[0][1]


def test_an_answer_that_cannot_be_sent_is_logged_not_raised(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    bus, answers = Bus(), Answers()
    answers.fail = True
    mission = StandInMission(bus)
    handler(tmp_path, clock, bus, answers)(sms(signed(1, "abort")))
    assert len(mission.commands) == 1 and "not sent" in caplog.text


# -- the recipient's fallback PIN ------------------------------------------------------------

PIN = "80604217"


def test_a_pin_command_is_signed_over_its_digits_and_never_shows_them(
    tmp_path: Path, clock: Clock
) -> None:
    text = signed(1, f"pin {PIN}")
    counter, when, command, digits, mac = text.split()
    assert (counter, when) == ("1", str(int(NOW)))
    message = f"skycourier-sms-v1\n{DRONE}\n447700900123\n1\n{int(NOW)}\npin {PIN}"
    assert mac == hmac.new(KEY, message.encode(), hashlib.sha256).hexdigest()[:32]
    assert (command, digits) == ("pin", PIN)
    verdict = authenticator(tmp_path, clock).check(OPERATOR, text)
    assert (verdict.command, verdict.pin) == ("pin", PIN)
    assert PIN not in repr(verdict)  # so not in any log line that shows it
    # Other digits under the same MAC: refused, and the refusal names no digits.
    forged = text.replace(PIN, "80604218")
    refused = authenticator(tmp_path, clock).check(OPERATOR, forged)
    assert refused.command is None and "MAC" in (refused.refusal or "")
    assert "8060421" not in (refused.refusal or "")


@pytest.mark.parametrize(
    "text",
    [
        f"1 {int(NOW)} pin 00",  # a pin command without digits
        f"1 {int(NOW)} pin 12 00",  # too short
        f"1 {int(NOW)} pin 1234567890123 00",  # too long
        f"1 {int(NOW)} pin 12a4 00",  # not digits
        f"1 {int(NOW)} pin ١٢٣٤ 00",  # digits, but not ASCII ones
    ],
)
def test_a_malformed_pin_is_refused_without_echoing_it(
    tmp_path: Path, clock: Clock, text: str
) -> None:
    verdict = authenticator(tmp_path, clock).check(OPERATOR, text)
    assert verdict.command is None
    assert verdict.refusal == "expected '<counter> <time> pin <digits> <mac>', 4-12 digits"
    with pytest.raises(ValueError, match="4-12 digits"):
        signed(1, text.split(maxsplit=2)[2].rsplit(maxsplit=1)[0])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20).filter(lambda t: t and not any(c.isspace() for c in t)))
def test_a_pin_is_accepted_only_as_4_to_12_ascii_digits(digits: str) -> None:
    from companion.modem.operator_sms import command_mac

    auth = CommandAuthenticator(
        key=KEY, drone_id=DRONE, counters=_MemoryCounters(), validity_s=300.0, clock=lambda: NOW
    )
    mac = command_mac(KEY, DRONE, OPERATOR, 1, int(NOW), f"pin {digits}")
    verdict = auth.check(OPERATOR, f"1 {int(NOW)} pin {digits} {mac}")
    valid = digits.isascii() and digits.isdigit() and 4 <= len(digits) <= 12
    assert (verdict.command == "pin") is valid
    assert verdict.pin == (digits if valid else None)


class StandInCheck:
    """Reacts to `FallbackPin` as the mission core's recipient check journals it."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.pins: list[FallbackPin] = []
        bus.publish(MissionEvent("m-7", Phase.RELEASE, "verify-recipient", {"drop": "m-7"}))
        bus.subscribe(FallbackPin, self.on_pin)

    def on_pin(self, pin: FallbackPin) -> None:
        self.pins.append(pin)
        outcome = "cleared" if pin.valid else "refused"
        detail = {"drop": pin.drop_id, "valid": pin.valid, "source": pin.source,
                  "outcome": outcome, "wrong_pins": len(self.pins)}  # fmt: skip
        self.bus.publish(MissionEvent("m-7", Phase.RELEASE, "recipient-pin", detail))


def test_a_pin_is_checked_outside_the_core_and_only_its_result_goes_to_the_mission(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    bus, answers, checked = Bus(), Answers(), []
    check = StandInCheck(bus)

    def pin_check(digits: str) -> tuple[str, bool]:
        checked.append(digits)
        return "m-7", hmac.compare_digest(digits.encode(), PIN.encode())

    operator = handler(tmp_path, clock, bus, answers)
    operator.pin_check = pin_check
    caplog.set_level("DEBUG")
    operator(sms(signed(1, "pin 1111")))
    operator(sms(signed(2, f"pin {PIN}")))
    assert checked == ["1111", PIN]
    assert check.pins == [
        FallbackPin("m-7", False, f"sms:{OPERATOR}"),
        FallbackPin("m-7", True, f"sms:{OPERATOR}"),
    ]
    assert [text for _, text in answers.sent] == [
        "skycourier-1 PIN mission m-7: PIN refused for drop m-7 (wrong PIN 1)",
        "skycourier-1 PIN mission m-7: PIN accepted for drop m-7: releasing the parcel",
    ]
    assert PIN not in caplog.text and "pin (counter 2)" in caplog.text


@pytest.mark.parametrize(
    ("pin_check", "why"),
    [
        (None, "no order with a fallback PIN on board"),
        (lambda digits: None, "no order with a fallback PIN on board"),
        (lambda digits: 1 / 0, "the PIN check failed (ZeroDivisionError)"),
    ],
    ids=["no checker", "no order", "a failing check"],
)
def test_a_pin_that_cannot_be_checked_is_answered_and_goes_nowhere(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture, pin_check, why: str
) -> None:
    bus, answers = Bus(), Answers()
    check = StandInCheck(bus)
    operator = handler(tmp_path, clock, bus, answers)
    operator.pin_check = pin_check
    caplog.set_level("DEBUG")
    operator(sms(signed(1, f"pin {PIN}")))
    assert check.pins == []
    assert answers.sent == [(OPERATOR, f"skycourier-1 PIN not checked: {why}")]
    assert PIN not in caplog.text


def test_the_signing_tool_reads_a_pin_from_standard_input(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import io

    key_file = tmp_path / "sms.key"
    key_file.write_text(KEY.hex())
    args = ["sign", "--key-file", str(key_file), "--drone", DRONE, "--sender", OPERATOR,
            "--counter", "3", "--time", str(int(NOW)), "pin"]  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO(PIN + "\n"))
    assert main(args) == 0
    text = capsys.readouterr().out.strip()
    verdict = authenticator(tmp_path, clock).check(OPERATOR, text)
    assert (verdict.command, verdict.pin) == ("pin", PIN)
    assert main([*args[:-1], "abort", "1234"]) == 2
    assert "takes nothing after it" in capsys.readouterr().err
