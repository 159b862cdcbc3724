"""SMS through the A7670 in text mode: send, receive, a fallback for critical events, and an
authoriser for operator commands.

Send (A76XX AT Command Manual V1.09 §9.2.13): `AT+CMGF=1`, then `AT+CMGS="<number>"`, the
`> ` prompt, the text and Ctrl-Z (0x1A); `+CMGS: <mr>` and OK within 40 s.
Receive (§9.2.9, §9.2.12): `AT+CNMI=2,1,0,0,0` makes the module store each new message and
announce it with `+CMTI: "SM",<index>`; the client reads it with `AT+CMGR=<index>` (header
`+CMGR: <stat>,<oa>,[<alpha>],<scts>` then the text), deletes it with `AT+CMGD=<index>` (the
SIM holds only a few dozen) and hands an `SmsMessage` to the callback. CMGF and CNMI are
AUTO_SAVE but are set again after every `SMS DONE`, since another program may have changed
them (two boards with one SIM answered in different modes for that reason, FACTS §6).

URC callbacks run on the port thread, which must not wait for the module; reading a message
is therefore done by the client's own worker thread.

Operator commands by SMS have the form ``<secret> <COMMAND> [args...]``, e.g.
``k7Fq2 RTL`` or ``k7Fq2 HOLD 30``: the first word is the shared secret (compared in constant
time), the second the command (upper-cased), the rest its arguments. Only messages from the
configured numbers (compared as E.164 digits, "+" and spaces ignored) are considered;
anything else is logged with its sender and ignored. The secret travels in clear text over
SMS: it authorises, it does not protect against someone who can read the operator's SMS.
"""

from __future__ import annotations

import hmac
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from companion.modem.at_engine import AtCommand, AtResponse, Urc
from companion.modem.channel import AtChannel, ChannelError
from companion.modem.responses import describe

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
MAX_TEXT = 160  # one GSM 7-bit message (§9.2.13); this driver sends no concatenated SMS
SEND_TIMEOUT_S = 40.0  # Max Response Time of AT+CMGS
_NUMBER_RE = re.compile(r"^\+?\d{3,20}$")
# GSM 03.38 basic set, as far as plain ASCII goes; anything else would be mangled.
_GSM_ASCII = set(
    "@$\n\r !\"#%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
_CMGR_RE = re.compile(r'^\+CMGR:\s*"([^"]*)"\s*,\s*"([^"]*)"\s*,\s*(?:"[^"]*")?\s*,\s*"([^"]*)"')

CRITICAL_EVENTS = ("delivered", "aborted", "emergency")


class SmsError(Exception):
    """An SMS could not be sent or read; the message names the number and the module's reason."""


@dataclass(frozen=True)
class SmsMessage:
    """A received text message. `timestamp` is the service centre's `yy/MM/dd,hh:mm:ss±zz`."""

    index: int
    sender: str
    timestamp: str
    text: str


@dataclass(frozen=True)
class SmsCommand:
    """An operator command that passed `SmsCommandAuthoriser`."""

    sender: str
    command: str
    args: tuple[str, ...]


class SmsClient:
    """Text-mode SMS on `channel`; `on_message` receives each new `SmsMessage` (on the
    client's worker thread), after which the message is deleted from the SIM."""

    def __init__(
        self,
        channel: AtChannel,
        *,
        on_message: Callable[[SmsMessage], None] | None = None,
    ) -> None:
        self.channel = channel
        self.on_message = on_message
        self.received = 0
        self._ready = False
        self._work: queue.Queue[int | str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> SmsClient:
        """Listen for `+CMTI` and `SMS DONE`; configure text mode and new-message URCs."""
        self.channel.subscribe_urc(self._on_urc)
        self._thread = threading.Thread(target=self._run, name="sms", daemon=True)
        self._thread.start()
        self._work.put("setup")
        return self

    def stop(self) -> None:
        self.channel.unsubscribe_urc(self._on_urc)
        self._work.put(None)
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> SmsClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def setup(self) -> None:
        """`AT+CMGF=1` (text mode) and `AT+CNMI=2,1,0,0,0` (store, announce with +CMTI)."""
        with self._lock:
            for line in ("AT+CMGF=1", "AT+CNMI=2,1,0,0,0"):
                response = self._call(AtCommand(line))
                if not response.ok:
                    # Variants without SMS answer AT+CMGF=1 with ERROR (FACTS §0).
                    raise SmsError(f"SMS set-up failed: {line}: {describe(response)}")
            self._ready = True

    def send(self, number: str, text: str) -> int:
        """Send `text` to `number`; returns the message reference (`+CMGS: <mr>`)."""
        if not _NUMBER_RE.match(number):
            raise SmsError(f"not a phone number: {number!r} (digits, optional leading +)")
        if not text or len(text) > MAX_TEXT:
            raise SmsError(f"SMS text must be 1-{MAX_TEXT} characters, got {len(text)}")
        if bad := sorted(set(text) - _GSM_ASCII):
            raise SmsError(f"SMS text has characters outside the GSM alphabet: {''.join(bad)!r}")
        if not self._ready:
            self.setup()
        with self._lock:
            command = AtCommand(
                f'AT+CMGS="{number}"', SEND_TIMEOUT_S, data=text.encode("ascii") + CTRL_Z
            )
            response = self._call(command)
        if not response.ok:
            raise SmsError(f"SMS to {number} failed: {describe(response)}")
        for line in response.lines:
            if line.startswith("+CMGS:") and line[6:].strip().isdigit():
                log.info("SMS sent to %s (reference %s)", number, line[6:].strip())
                return int(line[6:].strip())
        raise SmsError(f"SMS to {number}: OK without +CMGS reference ({response.lines})")

    def read(self, index: int) -> SmsMessage:
        """`AT+CMGR=<index>`, parsed."""
        with self._lock:
            response = self._call(AtCommand(f"AT+CMGR={index}"))
        if not response.ok:
            raise SmsError(f"reading SMS {index} failed: {describe(response)}")
        return parse_cmgr(index, response.lines)

    def delete(self, index: int) -> None:
        with self._lock:
            response = self._call(AtCommand(f"AT+CMGD={index}"))
        if not response.ok:
            raise SmsError(f"deleting SMS {index} failed: {describe(response)}")

    # -- worker ----------------------------------------------------------------------------

    def _on_urc(self, urc: Urc) -> None:
        """Port thread: queue the work."""
        if urc.name == "+CMTI":
            index = urc.line.rsplit(",", 1)[-1].strip()
            if index.isdigit():
                self._work.put(int(index))
            else:
                log.warning("SMS: malformed new-message URC %r", urc.line)
        elif urc.name == "SMS DONE":
            self._ready = False
            self._work.put("setup")

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            try:
                if item == "setup":
                    self.setup()
                else:
                    assert isinstance(item, int)
                    self._receive(item)
            except (SmsError, ChannelError) as exc:
                log.warning("SMS: %s", exc)
            except Exception:
                log.exception("SMS: unexpected error handling %r", item)

    def _receive(self, index: int) -> None:
        message = self.read(index)
        self.delete(index)
        self.received += 1
        log.info("SMS from %s: %d characters", message.sender, len(message.text))
        if self.on_message is not None:
            self.on_message(message)

    def _call(self, command: AtCommand) -> AtResponse:
        try:
            return self.channel.call(command)
        except ChannelError as exc:
            raise SmsError(f"{command.line.split('=')[0]}: {exc}") from exc


def parse_cmgr(index: int, lines: tuple[str, ...]) -> SmsMessage:
    """`+CMGR: "REC UNREAD","+8613...",,"08/01/30,20:40:31+00"` and the text line(s)."""
    if not lines:
        raise SmsError(f"SMS {index}: empty AT+CMGR answer")
    match = _CMGR_RE.match(lines[0])
    if match is None:
        raise SmsError(f"SMS {index}: not a text-mode +CMGR header: {lines[0]!r}")
    return SmsMessage(index, match.group(2), match.group(3), "\n".join(lines[1:]))


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())


class SmsCommandAuthoriser:
    """Turns an `SmsMessage` into an `SmsCommand` if it comes from an allowed number and
    starts with the shared secret (format in the module docstring); otherwise logs and
    returns None. Use as the `SmsClient`'s `on_message` with `on_command` set."""

    def __init__(
        self,
        *,
        numbers: Iterable[str],
        secret: str,
        on_command: Callable[[SmsCommand], None] | None = None,
    ) -> None:
        if len(secret) < 6 or any(c.isspace() for c in secret):
            raise ValueError("SMS command secret must be at least 6 characters, no spaces")
        self.numbers = {_digits(n) for n in numbers}
        if not self.numbers or "" in self.numbers:
            raise ValueError("SMS commands need at least one allowed phone number")
        self._secret = secret.encode()
        self.on_command = on_command
        self.rejected = 0

    def __call__(self, message: SmsMessage) -> SmsCommand | None:
        command = self.authorise(message)
        if command is not None and self.on_command is not None:
            self.on_command(command)
        return command

    def authorise(self, message: SmsMessage) -> SmsCommand | None:
        if _digits(message.sender) not in self.numbers:
            return self._reject(message, "sender not in the allowed numbers")
        words = message.text.split()
        if len(words) < 2:
            return self._reject(message, "expected '<secret> <COMMAND> [args]'")
        if not hmac.compare_digest(words[0].encode(), self._secret):
            return self._reject(message, "wrong secret")
        command = SmsCommand(message.sender, words[1].upper(), tuple(words[2:]))
        log.info("SMS command %s %s from %s", command.command, command.args, message.sender)
        return command

    def _reject(self, message: SmsMessage, why: str) -> None:
        self.rejected += 1
        log.warning("SMS from %s ignored: %s", message.sender, why)
        return None


class SmsFallback:
    """Sends critical events (delivered, aborted, emergency) as SMS to the operators while
    the data link is down; `link_up()` says whether it is (e.g. `transport.connected`).

    `notify` only queues: an SMS takes up to 40 s per number (`SEND_TIMEOUT_S`), and the
    caller is the mission's thread publishing on the bus, which must never wait for the
    modem. The fallback's own worker thread sends, one notification at a time. The queue is
    bounded (`max_queued`): past it a notification is dropped, counted in `dropped` and
    logged. Failures are logged and counted in `failed`, never raised: the event is in the
    durable telemetry queue anyway and goes out once data is back.
    """

    def __init__(
        self,
        sms: SmsClient,
        *,
        numbers: Iterable[str],
        link_up: Callable[[], bool],
        drone_id: str,
        kinds: Iterable[str] = CRITICAL_EVENTS,
        max_queued: int = 8,
    ) -> None:
        self.sms = sms
        self.numbers = list(numbers)
        for number in self.numbers:
            if not _NUMBER_RE.match(number):
                raise ValueError(f"not a phone number: {number!r}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        self.link_up = link_up
        self.drone_id = drone_id
        self.kinds = frozenset(kinds)
        self.max_queued = max_queued
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        # Unbounded underneath so that stop()'s wake-up always fits; notify() keeps the bound.
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SmsFallback:
        """Run the worker thread that sends queued notifications."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="sms-fallback", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send what is queued if that takes at most `timeout_s`, then end the worker; what
        is still queued then is dropped, counted and logged."""
        with self._lock:  # so that no notification can be queued behind the wake-up
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None)
        thread.join(timeout_s)
        if thread.is_alive():
            # Still in a send (up to 40 s): the worker drops the rest when it comes back.
            self._stopping.set()
            log.warning("SMS fallback: stopped with a send still under way after %g s",
                        timeout_s)  # fmt: skip

    def __enter__(self) -> SmsFallback:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def notify(self, kind: str, detail: str = "") -> bool:
        """Queue `kind` (+ detail) for SMS if it is critical and the data link is down.

        Returns whether it was queued; never waits for the modem. A notification the queue
        has no room for (or that comes after `stop`) is dropped, counted and logged.
        """
        if kind not in self.kinds or self.link_up():
            return False
        text = _gsm_safe(f"{self.drone_id} {kind.upper()} {detail}".strip())[:MAX_TEXT]
        with self._lock:
            if self._thread is None:
                return self._drop(text, "the SMS fallback is not running")
            if self._queue.qsize() >= self.max_queued:
                return self._drop(text, f"{self.max_queued} notifications already queued")
            self._queue.put((kind, text))
        return True

    def _drop(self, text: str, why: str) -> bool:
        self.dropped += 1
        log.error("SMS fallback: %r not sent: %s (%d dropped so far)", text, why, self.dropped)
        return False

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, text = item
            if self._stopping.is_set():
                with self._lock:
                    self._drop(text, "stopped before it could be sent")
                continue
            self._send(kind, text)

    def _send(self, kind: str, text: str) -> None:
        for number in self.numbers:
            try:
                self.sms.send(number, text)
            except SmsError as exc:
                self.failed += 1
                log.error("SMS fallback for %s to %s failed: %s", kind, number, exc)
            except Exception:  # a bug must not end the worker: later events still go out
                self.failed += 1
                log.exception("SMS fallback for %s to %s failed unexpectedly", kind, number)
            else:
                self.sent += 1


def _gsm_safe(text: str) -> str:
    return "".join(c if c in _GSM_ASCII else "?" for c in text)
