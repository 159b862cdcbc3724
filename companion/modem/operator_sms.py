"""Operator commands by SMS: authenticated, never replayed, acted on, answered.

A command is one SMS from an operator's number (`[modem] sms_operators`):

    <counter> <time> <command> <mac>      e.g.  "42 1767225600 abort 5f0c...e1"
    <counter> <time> pin <digits> <mac>   e.g.  "43 1767225660 pin 4711 9a3e...07"

- `<counter>`: a decimal number the operator's tool raises by one for every command; the
  drone accepts a counter only if it is above the last one it accepted from that number,
  and writes the new one to disk (atomically, fsynced) *before* acting, so neither a
  replayed SMS nor a restart lets an old command through again.
- `<time>`: Unix seconds (UTC) when the command was signed; a command older than the
  validity window (`[modem] sms_validity_s`) or more than `FUTURE_SKEW_S` ahead of the
  drone's clock is refused: a captured command cannot be held back and sent later.
- `<command>`: status, abort (return home: RTL), land (land where it is), hold (stop where it
  is), resume; or `pin <digits>` (4 to 12 digits): the recipient's fallback PIN for the order
  in hand-over, which the drone checks against the order's hash (`pin_check`) and hands to
  the mission as a `FallbackPin` result (valid or not, never the digits). The PIN is never
  logged, journaled or echoed in an answer.
- `<mac>`: HMAC-SHA256 (RFC 2104, stdlib `hmac`) under the shared key (`[modem]
  sms_key_file`) over the drone id, the sender's digits, counter, time and command, cut to
  16 octets (32 hex digits). The sender number is inside the MAC, so a command signed for
  one operator's counter cannot be replayed from another (spoofed) number, nor one signed
  for another drone on this one. `sign_command` (and `python -m
  companion.modem.operator_sms sign`) makes the text.

The sender number is checked first (by `SmsClient`, before the text is even decoded); SMS
sender numbers can be spoofed, which is why the MAC is what authorises.

Every command from an operator's number is answered by SMS: the status; what the mission
did (it journals the command as a transition and publishes it as a `MissionEvent`, whose
`source` is "sms:<number>"); that no mission is flying (the command is then only logged);
or the refusal and its reason. Refusals are answered at most `MAX_REFUSAL_ANSWERS` times an
hour per number, so spoofed messages cannot make the drone spend its SMS. Every outcome is
logged with the sender, counter and command; a refusal never echoes the key or the MAC.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from companion.bus import Bus
from companion.mission.events import MissionEvent
from companion.mission.inputs import FallbackPin, OperatorAction, OperatorCommand
from companion.mission.journal import FINISHED_EVENT
from companion.modem.sms import SmsError, SmsMessage, gsm_safe
from firmware_bridge.state import VehicleState

log = logging.getLogger(__name__)

COMMANDS = ("status", "abort", "land", "hold", "resume", "pin")
_ACTIONS = {
    "abort": OperatorAction.ABORT,
    "land": OperatorAction.LAND,
    "hold": OperatorAction.HOLD,
    "resume": OperatorAction.RESUME,
}
MAC_HEX = 32  # 16 octets of HMAC-SHA256
#: A fallback PIN's length in digits.
PIN_DIGITS = (4, 12)
MIN_KEY_OCTETS = 16
#: How far ahead of the drone's clock a command's time may be (the operator's phone and the
#: drone's clock never agree to the second).
FUTURE_SKEW_S = 60.0
MAX_COUNTER = 2**48
#: Refusals answered per operator number and hour; the rest are only logged.
MAX_REFUSAL_ANSWERS = 5
_DOMAIN = "skycourier-sms-v1"


class SmsAuthError(Exception):
    """The key file or the counter store cannot be used; the message names the file (never
    its content)."""


def load_key(path: Path) -> bytes:
    """The shared key from `path`: hexadecimal digits (e.g. `openssl rand -hex 32`), at
    least 16 octets. Errors name the file and what is wrong, never what it holds."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SmsAuthError(
            f"cannot read the SMS key file {path}: {exc.__class__.__name__}"
        ) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise SmsAuthError(f"SMS key file {path} must hold hexadecimal digits only") from None
    if len(key) < MIN_KEY_OCTETS:
        raise SmsAuthError(
            f"SMS key in {path} is {len(key)} octets; at least {MIN_KEY_OCTETS} are needed"
        )
    return key


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isascii() and c.isdigit())


def command_mac(
    key: bytes, drone_id: str, sender: str, counter: int, when: int, command: str
) -> str:
    """The MAC of a command, in hex (see the module docstring for what it covers)."""
    message = "\n".join([_DOMAIN, drone_id, _digits(sender), str(counter), str(when), command])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()[:MAC_HEX]


def _is_pin(text: str) -> bool:
    return text.isascii() and text.isdigit() and PIN_DIGITS[0] <= len(text) <= PIN_DIGITS[1]


def sign_command(
    key: bytes, drone_id: str, sender: str, counter: int, when: int, command: str
) -> str:
    """The SMS text an operator sends from `sender` to make `drone_id` do `command` (one of
    `COMMANDS`; the PIN command is "pin <digits>")."""
    words = command.lower().split()
    if not words or words[0] not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: one of {', '.join(COMMANDS)}")
    if words[0] == "pin":
        if len(words) != 2 or not _is_pin(words[1]):
            raise ValueError("the pin command is 'pin <digits>', {}-{} digits".format(*PIN_DIGITS))
    elif len(words) != 1:
        raise ValueError(f"the {words[0]} command takes nothing after it")
    if not 0 < counter < MAX_COUNTER:
        raise ValueError(f"counter must be 1 to {MAX_COUNTER - 1}")
    command = " ".join(words)
    mac = command_mac(key, drone_id, sender, counter, when, command)
    return f"{counter} {when} {command} {mac}"


@dataclass(frozen=True)
class Verdict:
    """What the authenticator decided: `command` if accepted, else `refusal` says why; `pin`
    the digits of an accepted pin command (kept out of the repr, so out of logs)."""

    sender: str
    command: str | None
    counter: int | None
    refusal: str | None = None
    pin: str | None = field(default=None, repr=False)


class CounterStore:
    """The last accepted counter per operator number, in a JSON file written atomically
    (temporary file, fsync, rename, fsync of the folder): a power cut leaves the old or the
    new file, never half of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._counters = self._load()

    def _load(self) -> dict[str, int]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SmsAuthError(f"cannot read the SMS counter file {self.path}: {exc}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise SmsAuthError(f"SMS counter file {self.path} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in data.items()
        ):
            raise SmsAuthError(
                f"SMS counter file {self.path} must map numbers to counters (non-negative)"
            )
        return data

    def last(self, sender: str) -> int:
        with self._lock:
            return self._counters.get(_digits(sender), 0)

    def advance(self, sender: str, counter: int) -> bool:
        """Record `counter` for `sender` if it is above the last one; False if it is not.
        Raises SmsAuthError if the file cannot be written (the caller refuses then)."""
        with self._lock:
            key = _digits(sender)
            if counter <= self._counters.get(key, 0):
                return False
            updated = {**self._counters, key: counter}
            self._write(updated)
            self._counters = updated
            return True

    def _write(self, counters: dict[str, int]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(counters, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            raise SmsAuthError(f"cannot write the SMS counter file {self.path}: {exc}") from exc


class CommandAuthenticator:
    """Checks one SMS text from an operator's number: form, command, MAC, time, counter (in
    that order: nothing unauthenticated touches the counters)."""

    def __init__(
        self,
        *,
        key: bytes,
        drone_id: str,
        counters: CounterStore,
        validity_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) < MIN_KEY_OCTETS:
            raise ValueError(f"the SMS key must be at least {MIN_KEY_OCTETS} octets")
        if validity_s <= 0:
            raise ValueError(f"validity_s must be positive, got {validity_s}")
        self._key = key
        self.drone_id = drone_id
        self.counters = counters
        self.validity_s = validity_s
        self.clock = clock

    def check(self, sender: str, text: str) -> Verdict:
        words = text.split()
        pin = None
        if len(words) == 5 and words[2].lower() == "pin":
            pin = words.pop(3)
        if len(words) != 4:
            return Verdict(sender, None, None, "expected '<counter> <time> <command> <mac>'")
        counter_text, when_text, command, mac = words
        counter, when = _number(counter_text), _number(when_text)
        if counter is None or not 0 < counter < MAX_COUNTER:
            return Verdict(sender, None, None, "the counter is not a number from 1 to 2^48")
        if when is None:
            return Verdict(sender, None, counter, "the time is not a number of seconds")
        command = command.lower()
        if command not in COMMANDS:
            return Verdict(sender, None, counter, f"unknown command (known: {', '.join(COMMANDS)})")
        if (command == "pin") != (pin is not None) or (pin is not None and not _is_pin(pin)):
            why = "expected '<counter> <time> pin <digits> <mac>', {}-{} digits"
            return Verdict(sender, None, counter, why.format(*PIN_DIGITS))
        signed = command if pin is None else f"{command} {pin}"
        expected = command_mac(self._key, self.drone_id, sender, counter, when, signed)
        if not hmac.compare_digest(mac.lower().encode(), expected.encode()):
            return Verdict(sender, None, counter, "the MAC does not match (wrong key or text)")
        age = self.clock() - when
        if age > self.validity_s:
            why = f"stale: signed {age:.0f} s ago, valid {self.validity_s:g} s"
            return Verdict(sender, None, counter, why)
        if age < -FUTURE_SKEW_S:
            why = f"signed {-age:.0f} s in the future: check the clocks"
            return Verdict(sender, None, counter, why)
        try:
            fresh = self.counters.advance(sender, counter)
        except SmsAuthError as exc:
            log.error("SMS command from %s refused: %s", sender, exc)
            return Verdict(sender, None, counter, "the drone cannot record the counter")
        if not fresh:
            last = self.counters.last(sender)
            return Verdict(sender, None, counter, f"replay: counter {counter}, last used {last}")
        return Verdict(sender, command, counter, pin=pin)


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 15 else None


class OperatorSms:
    """The `SmsClient.on_message` of operator commands: authenticates each, acts (an
    `OperatorCommand` on the bus, or the status), and answers by SMS through `send`.

    It watches `MissionEvent`s and `VehicleState`s on `bus` to know whether a mission is
    flying, to answer with what the mission did, and to give the status. `answer_wait_s`
    bounds the wait for the mission's journaled reaction. Without an `authenticator` (no
    usable key or counter file) every command is refused, saying so.

    `pin_check(digits)` checks a fallback PIN against the order in hand-over: it returns
    (the order's drop id, whether the PIN matched), or None when no order with a PIN is on
    board; its result goes to the mission as a `FallbackPin`. Without it a pin command is
    answered as not checked.
    """

    def __init__(
        self,
        *,
        bus: Bus,
        authenticator: CommandAuthenticator | None,
        send: Callable[[str, str], object],
        drone_id: str,
        answer_wait_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        pin_check: Callable[[str], tuple[str, bool] | None] | None = None,
    ) -> None:
        self.bus = bus
        self.authenticator = authenticator
        self.pin_check = pin_check
        self.send = send
        self.drone_id = drone_id
        self.answer_wait_s = answer_wait_s
        self.clock = clock
        self.accepted = 0
        self.refused = 0
        self._cond = threading.Condition()
        self._mission: MissionEvent | None = bus.latest(MissionEvent)
        self._reactions: list[MissionEvent] = []
        self._refusals: dict[str, deque[float]] = {}
        self._unsubscribe = bus.subscribe(MissionEvent, self._on_mission_event)

    def close(self) -> None:
        self._unsubscribe()

    @property
    def mission_flying(self) -> bool:
        """Whether a mission has started and not yet ended (delivered, or its abort over)."""
        event = self._mission
        return event is not None and event.event != FINISHED_EVENT

    def _on_mission_event(self, event: MissionEvent) -> None:
        with self._cond:
            self._mission = event
            if _source(event):
                self._reactions.append(event)
                del self._reactions[:-16]
            self._cond.notify_all()

    def __call__(self, message: SmsMessage) -> None:
        if message.part is not None:
            _, total, number = message.part
            why = f"part {number} of {total} of a longer message: one SMS per command"
            verdict = Verdict(message.sender, None, None, why)
        elif message.binary:
            verdict = Verdict(message.sender, None, None, "8-bit data, not text")
        elif self.authenticator is None:
            why = "the drone has no usable SMS key or counter file: commands are off"
            verdict = Verdict(message.sender, None, None, why)
        else:
            verdict = self.authenticator.check(message.sender, message.text)
        if verdict.command is None:
            self._refuse(verdict)
            return
        self.accepted += 1
        command = verdict.command
        if command == "status":
            answer = self.status()
            log.info(
                "SMS command status (counter %s) from %s: answered", verdict.counter, message.sender
            )
        elif command == "pin":
            answer = self._pin(message.sender, verdict)
        else:
            answer = self._act(message.sender, command, verdict.counter)
        self._answer(message.sender, answer)

    def _pin(self, sender: str, verdict: Verdict) -> str:
        """Check the PIN against the order in hand-over and give the mission the result.
        The digits go nowhere else: not to the log, the bus, the journal or the answer."""
        checked: tuple[str, bool] | None = None
        why = "no order with a fallback PIN on board"
        if self.pin_check is not None and verdict.pin is not None:
            try:
                checked = self.pin_check(verdict.pin)
            except Exception as exc:  # a failing check must not take the handler down
                why = f"the PIN check failed ({type(exc).__name__})"
        if checked is None:
            log.warning("SMS command pin (counter %s) from %s: not checked: %s",
                        verdict.counter, sender, why)  # fmt: skip
            return f"{self.drone_id} PIN not checked: {why}"
        drop_id, valid = checked
        result = FallbackPin(drop_id, valid is True, f"sms:{sender}")
        return self._act(sender, "pin", verdict.counter, result)

    def _act(
        self, sender: str, command: str, counter: int | None, event: object | None = None
    ) -> str:
        """Publish `event` (by default the operator command) and answer with the mission's
        journaled reaction to it."""
        source = f"sms:{sender}"
        flying = self.mission_flying
        mission = self._mission.mission_id if self._mission is not None else None
        with self._cond:
            seen = len(self._reactions)
        self.bus.publish(event if event is not None else OperatorCommand(_ACTIONS[command], source))
        name = command.upper()
        if not flying:
            log.warning(
                "SMS command %s (counter %s) from %s: no mission flying, recorded only",
                command,
                counter,
                sender,
            )
            return f"{self.drone_id} {name} recorded, no mission flying: nothing done"
        with self._cond:
            self._cond.wait_for(
                lambda: any(_source(e) == source for e in self._reactions[seen:]),
                timeout=self.answer_wait_s,
            )
            reaction = next((e for e in self._reactions[seen:] if _source(e) == source), None)
        if reaction is None:
            log.warning(
                "SMS command %s (counter %s) from %s: mission %s did not answer in %g s",
                command,
                counter,
                sender,
                mission,
                self.answer_wait_s,
            )
            return (
                f"{self.drone_id} {name} sent to mission {mission}, no answer in "
                f"{self.answer_wait_s:g} s: send status"
            )
        outcome = _describe(reaction)
        log.info(
            "SMS command %s (counter %s) from %s: mission %s %s",
            command,
            counter,
            sender,
            reaction.mission_id,
            outcome,
        )
        return f"{self.drone_id} {name} mission {reaction.mission_id}: {outcome}"

    def status(self) -> str:
        """The drone in one SMS: mission and phase, mode, altitude, battery, position, GPS."""
        parts = [f"{self.drone_id} STATUS"]
        event = self._mission
        if event is None:
            parts.append("no mission")
        else:
            state = "flying" if self.mission_flying else "ended"
            parts.append(f"mission {event.mission_id} {event.phase.value} ({state})")
        vehicle = self.bus.latest(VehicleState)
        if vehicle is None:
            parts.append("no vehicle state")
        else:
            parts.append(f"{vehicle.mode} {'armed' if vehicle.armed else 'disarmed'}")
            pos = vehicle.position
            if pos is not None:
                parts.append(f"{pos.alt_rel_m:.0f}m {pos.lat:.5f},{pos.lon:.5f}")
            if vehicle.battery.remaining_pct is not None:
                parts.append(f"batt {vehicle.battery.remaining_pct}%")
            parts.append(f"gps fix {vehicle.gps.fix_type} {vehicle.gps.satellites or 0}sat")
            parts.append(f"{max(0.0, self.clock() - vehicle.wall_time):.0f}s old")
        return gsm_safe("; ".join(parts))[:160]

    def _refuse(self, verdict: Verdict) -> None:
        self.refused += 1
        log.warning(
            "SMS command from %s (counter %s) refused: %s",
            verdict.sender,
            verdict.counter,
            verdict.refusal,
        )
        now = time.monotonic()
        recent = self._refusals.setdefault(_digits(verdict.sender), deque())
        while recent and now - recent[0] > 3600.0:
            recent.popleft()
        if len(recent) >= MAX_REFUSAL_ANSWERS:
            log.warning(
                "SMS refusal to %s not answered: %d answered in the last hour",
                verdict.sender,
                len(recent),
            )
            return
        recent.append(now)
        self._answer(verdict.sender, f"{self.drone_id} refused: {verdict.refusal}")

    def _answer(self, number: str, text: str) -> None:
        try:
            self.send(number, gsm_safe(text)[:160])
        except SmsError as exc:
            log.error("SMS answer to %s not sent (%s): %r", number, exc, text)


def _source(event: MissionEvent) -> str | None:
    """The operator source a mission event answers: "sms:<number>" in `source`, or in the
    `reason` of an operator hold, abort or land ("operator abort (sms:+44...)")."""
    detail = event.detail
    source = detail.get("source")
    if isinstance(source, str):
        return source
    reason = detail.get("reason")
    if isinstance(reason, str) and reason.startswith("operator ") and reason.endswith(")"):
        return reason[reason.find("(") + 1 : -1]
    return None


def _describe(event: MissionEvent) -> str:
    """What a mission did, from its journaled transition."""
    detail = event.detail
    if event.event == "abort":
        # An abort is journaled in the abort phase; `phase` is where the mission was.
        return f"aborting, {detail.get('action')} (was in {detail.get('phase')})"
    if event.event == "hold":
        return f"holding in {event.phase.value}"
    if event.event == "resume":
        return f"resumed {event.phase.value} after {detail.get('held_s')} s"
    if event.event == "operator-ignored":
        return f"not done: {detail.get('why')}"
    if event.event == "recipient-pin":
        if detail.get("outcome") == "cleared":
            return f"PIN accepted for drop {detail.get('drop')}: releasing the parcel"
        return f"PIN refused for drop {detail.get('drop')} (wrong PIN {detail.get('wrong_pins')})"
    if event.event == "recipient-ignored":
        return f"PIN not used: {detail.get('why')}"
    return f"{event.event} in {event.phase.value}"


def add_sign_arguments(sign: argparse.ArgumentParser) -> None:
    """The options of `skycourier sms sign` (and `python -m companion.modem.operator_sms
    sign`)."""
    sign.add_argument("--key-file", type=Path, required=True, help="the shared key (hex)")
    sign.add_argument("--drone", required=True, help="the drone's [telemetry] drone_id")
    sign.add_argument("--sender", required=True, help="the number the SMS is sent from")
    sign.add_argument("--counter", type=int, required=True, help="above the last one used")
    sign.add_argument("--time", type=int, help="Unix seconds; default: now")
    sign.add_argument("command", choices=COMMANDS)
    sign.add_argument(
        "digits", nargs="?", help="for pin: the PIN (default: read from standard input)"
    )


def run_sign(args: argparse.Namespace) -> int:
    """Print the SMS text of a signed operator command; 2 with the reason when it cannot."""
    try:
        key = load_key(args.key_file)
        when = args.time if args.time is not None else int(time.time())
        command = args.command
        if command == "pin":
            digits = args.digits if args.digits is not None else sys.stdin.readline().strip()
            command = f"pin {digits}"
        elif args.digits is not None:
            raise ValueError(f"the {command} command takes nothing after it")
        print(sign_command(key, args.drone, args.sender, args.counter, when, command))
    except (SmsAuthError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m companion.modem.operator_sms sign --key-file K --drone D --sender N
    --counter C COMMAND`: print the SMS text for an operator command."""
    parser = argparse.ArgumentParser(prog="python -m companion.modem.operator_sms")
    sub = parser.add_subparsers(dest="action", required=True)
    add_sign_arguments(sub.add_parser("sign", help="print the text of a signed SMS command"))
    return run_sign(parser.parse_args(argv))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
