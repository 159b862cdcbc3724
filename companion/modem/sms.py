"""SMS through the A7670 in PDU mode: receive from a store that never fills up, send, and a
fallback that sends critical events while the data link is down.

Why PDU mode (A76XX AT Command Manual V1.09 §9.2.3 AT+CMGF=0): in text mode an SMS body is
printed as it is, CR, LF and whole lines that look like `OK` or `+CMQTTRXSTART` included,
and only AT+CSDH=1 gives it a length. A PDU is one hex line whose length the header states
(§9.2.12), so a stranger's text never reaches the AT engine as a line; the engine frames
text-mode bodies too (`at_engine.sms_framing`), should anything switch the module back.

Receiving (§9.2.2 AT+CPMS, §9.2.9 AT+CNMI, §9.2.11 AT+CMGL, §9.2.12 AT+CMGR, §9.2.16
AT+CMGD):

- set-up (at start and after every `SMS DONE`, since CMGF/CPMS/CNMI are AUTO_SAVE and another
  program may have changed them): `AT+CMGF=0`, `AT+CSDH=1`, `AT+CNMI=2,1,0,0,0` (store each
  new message and announce it with `+CMTI: <mem>,<index>`), a sweep of the other store,
  then `AT+CPMS=<mem>,<mem>,<mem>` (one store for reading, writing and receiving) and a
  sweep of it;
- a sweep (`AT+CMGL=4`, "all messages") reads whatever is stored: messages that came while
  the daemon was down, and any a lost `+CMTI` left behind. It runs after set-up and every
  `sweep_s`, so the store never fills up;
- each message is handled, then deleted, whatever it held: the sender is read from the PDU
  first (`sms_pdu.sender_of`) and a message from anyone `accept` refuses is logged (sender,
  size, the PDU in hex) and deleted without its text ever being decoded; an unreadable one
  is logged with the reason and deleted; only an accepted sender's message is decoded and
  handed to `on_message`. Nothing is dropped without a log line naming it.
- a `+CMT` (a message routed to the host, not stored: CNMI mt=2, set by someone else) is
  handled the same way, with nothing to delete.

URC callbacks run on the port thread, which must not wait for the module; the client's own
worker thread does the reading, deleting and calling back.
"""

from __future__ import annotations

import hmac
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from companion.modem.at_engine import AtCommand, AtResponse, SmsData, Urc, ascii_int
from companion.modem.channel import AtChannel, ChannelError
from companion.modem.responses import describe
from companion.modem.sms_pdu import MAX_SEPTETS, PduError, decode_deliver, encode_submit, sender_of

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
MAX_TEXT = MAX_SEPTETS  # one GSM 7-bit message (§9.2.13); this driver sends no concatenated SMS
SEND_TIMEOUT_S = 40.0  # Max Response Time of AT+CMGS
LIST_TIMEOUT_S = 20.0  # AT+CMGL of a full store: the manual's 9 s is for one message
#: The stores AT+CPMS offers on the A76xx (§9.2.2): "ME" (module flash, 180 messages in the
#: manual's example) and "SM" (the SIM, a few dozen).
STORAGES = ("ME", "SM")
_NUMBER_RE = re.compile(r"^\+?[0-9]{3,20}$")
# The write form answers `+CPMS: <used1>,<total1>,...`, the read form `+CPMS: "ME",<used1>,...`.
_CPMS_RE = re.compile(r'^\+CPMS:\s*(?:"[A-Z]+",)?([0-9]{1,6}),([0-9]{1,6})')
# GSM 03.38 basic set, as far as plain ASCII goes: what a notification may hold.
_GSM_ASCII = set(
    "@$\n\r !\"#%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)

CRITICAL_EVENTS = ("delivered", "aborted", "emergency")


class SmsError(Exception):
    """An SMS could not be sent or read; the message names the number and the module's reason."""


@dataclass(frozen=True)
class SmsMessage:
    """A received text message from an accepted sender. `index` is its place in the store
    (None for a `+CMT` routed to the host); `timestamp` the service centre's
    "yy/MM/dd,hh:mm:ss±zz"; `part` (reference, total, number) for a part of a
    concatenated message; `binary` for 8-bit data (`text` is then its Latin-1 reading)."""

    index: int | None
    sender: str
    timestamp: str
    text: str
    part: tuple[int, int, int] | None = None
    binary: bool = False


def same_number(a: str, b: str) -> bool:
    """Whether two phone numbers are the same, compared as their digits ("+44 7700 900123"
    is "+447700900123"), in constant time."""
    return hmac.compare_digest(_digits(a).encode(), _digits(b).encode())


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isascii() and c.isdigit())


def number_is_one_of(numbers: Iterable[str]) -> Callable[[str], bool]:
    """An `accept` predicate: the sender is a number (never an alphanumeric name, which
    anyone can set) and equals one of `numbers`."""
    allowed = [n for n in numbers if _digits(n)]

    def accept(sender: str) -> bool:
        return bool(_digits(sender)) and any(same_number(sender, n) for n in allowed)

    return accept


class SmsClient:
    """PDU-mode SMS on `channel`. `accept(sender)` says whose messages are decoded and given
    to `on_message` (on the client's worker thread); every message is deleted after it was
    handled. `storage` is the AT+CPMS store; `sweep_s` how often stored messages are
    looked for."""

    def __init__(
        self,
        channel: AtChannel,
        *,
        on_message: Callable[[SmsMessage], None] | None = None,
        accept: Callable[[str], bool] = lambda sender: False,
        storage: str = "ME",
        sweep_s: float = 60.0,
    ) -> None:
        if storage not in STORAGES:
            raise ValueError(f"SMS storage must be one of {', '.join(STORAGES)}, not {storage!r}")
        if sweep_s <= 0:
            raise ValueError(f"sweep_s must be positive, got {sweep_s}")
        self.channel = channel
        self.on_message = on_message
        self.accept = accept
        self.storage = storage
        self.sweep_s = sweep_s
        #: Messages given to `on_message`, refused (sender not accepted), unreadable.
        self.received = 0
        self.ignored = 0
        self.unreadable = 0
        self.deleted = 0
        #: (used, total) of the store, as the last AT+CPMS answered.
        self.usage: tuple[int, int] | None = None
        self._ready = False
        self._work: queue.Queue[tuple[str, int | SmsData | None] | None] = queue.Queue()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """Whether the module is set up (PDU mode, store, indications) and swept."""
        return self._ready

    def start(self) -> SmsClient:
        """Listen for `+CMTI`, `+CMT` and `SMS DONE`; set up, sweep, and sweep every
        `sweep_s` from the worker thread."""
        self.channel.subscribe_urc(self._on_urc)
        self._thread = threading.Thread(target=self._run, name="sms", daemon=True)
        self._thread.start()
        self._work.put(("setup", None))
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

    # -- set-up and receiving --------------------------------------------------------------

    def setup(self) -> None:
        """PDU mode, text headers with lengths, +CMTI indications; then a sweep of every
        store (messages may wait in the other one: CPMS is AUTO_SAVE, and a SIM may come
        with messages), ending with `storage` selected for everything."""
        with self._lock:
            self._must("AT+CMGF=0", "SMS set-up failed")  # variants without SMS: ERROR
            self._must("AT+CSDH=1", "SMS set-up failed")
            self._must("AT+CNMI=2,1,0,0,0", "SMS set-up failed")
            for other in STORAGES:
                if other == self.storage:
                    continue
                response = self._call(AtCommand(f'AT+CPMS="{other}","{other}","{other}"'))
                if response.ok:  # a module or SIM without that store answers an error
                    self._sweep()
            storage = f'"{self.storage}"'
            response = self._must(f"AT+CPMS={storage},{storage},{storage}", "SMS set-up failed")
            self._note_usage(response)
            self._ready = True
            self._sweep()

    def sweep(self) -> int:
        """Read every stored message (`AT+CMGL=4`), handle and delete each; returns how many.
        A listing cut short (an answer too long to keep) is read again until it is whole."""
        with self._lock:
            if not self._ready:
                self.setup()  # which sweeps
                return 0
            self._ensure_pdu_mode()
            return self._sweep()

    def _sweep(self) -> int:
        handled = 0
        with self._lock:
            while True:
                response = self._call(AtCommand("AT+CMGL=4", LIST_TIMEOUT_S))
                for body in response.data:
                    index = _listed_index(body.header)
                    self._handle(index, body)
                    if index is not None:
                        self._delete(index)
                    handled += 1
                if response.error is None or response.error.kind != "overflow":
                    break
            if not response.ok and response.error is not None:
                if response.error.kind == "unframed":
                    self._ready = False  # the module was not in PDU mode: set up again
                raise SmsError(f"listing stored SMS failed: {describe(response)}")
            usage = self._call(AtCommand("AT+CPMS?"))
            self._note_usage(usage)
        if handled:
            log.info("SMS sweep: %d stored message(s) handled and deleted", handled)
        return handled

    def receive(self, index: int) -> None:
        """Read message `index` (`AT+CMGR`), handle it and delete it."""
        with self._lock:
            self._ensure_pdu_mode()
            response = self._call(AtCommand(f"AT+CMGR={index}"))
            if not response.ok:
                error = response.error
                if error is not None and error.kind == "cms" and error.code == 321:
                    log.info("SMS %d: already gone from the store", index)
                    return
                if error is not None and error.kind == "unframed" and response.data:
                    self._ready = False  # the module was not in PDU mode: set up again
                    self._handle(index, response.data[0])
                    self._delete(index)
                    return
                raise SmsError(f"reading SMS {index} failed: {describe(response)}")
            if not response.data:
                raise SmsError(f"reading SMS {index}: no PDU in the answer {response.lines}")
            self._handle(index, response.data[0])
            self._delete(index)

    def _handle(self, index: int | None, body: SmsData) -> None:
        """Sender first; only an accepted sender's message is decoded and called back."""
        where = "routed SMS" if index is None else f"SMS {index}"
        if body.framing != "pdu" or body.problem is not None:
            self.unreadable += 1
            log.warning("%s not in PDU form (%s); deleted: %r", where,
                        body.problem or f"{body.framing} text", body.data[:400])  # fmt: skip
            return
        try:
            sender, numeric = sender_of(body.data)
        except PduError as exc:
            self.unreadable += 1
            log.warning("%s unreadable (%s); deleted: %s", where, exc, body.data.decode())
            return
        if not numeric or not self.accept(sender):
            self.ignored += 1
            log.warning("%s from %r ignored: not an operator's number (%d octets, not "
                        "decoded); deleted: %s", where, sender, len(body.data) // 2,
                        body.data.decode())  # fmt: skip
            return
        try:
            deliver = decode_deliver(body.data)
        except PduError as exc:
            self.unreadable += 1
            log.warning("%s from %s unreadable (%s); deleted: %s", where, sender, exc,
                        body.data.decode())  # fmt: skip
            return
        self.received += 1
        message = SmsMessage(index, deliver.sender, deliver.timestamp, deliver.text,
                             deliver.part, deliver.binary)  # fmt: skip
        log.info("%s from %s: %d characters", where, message.sender, len(message.text))
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception:  # handled as far as it goes: logged, and still deleted
                log.exception("%s from %s: handling failed: %r", where, message.sender,
                              message.text)  # fmt: skip

    def _delete(self, index: int) -> None:
        response = self._call(AtCommand(f"AT+CMGD={index}"))
        if response.ok:
            self.deleted += 1
        else:  # still stored: the next sweep reads it again
            log.warning("deleting SMS %d failed: %s", index, describe(response))

    def _note_usage(self, response: AtResponse) -> None:
        for line in response.lines:
            match = _CPMS_RE.match(line)
            if match:
                used, total = int(match.group(1)), int(match.group(2))
                self.usage = (used, total)
                if total and used * 4 >= total * 3:
                    log.warning("SMS store %s is %d/%d full", self.storage, used, total)
                return

    def _ensure_pdu_mode(self) -> None:
        if not self._ready:
            self.setup()
            return
        response = self._call(AtCommand("AT+CMGF?"))
        if any(line.replace(" ", "") == "+CMGF:0" for line in response.lines):
            return
        log.warning("SMS: the module left PDU mode (%s); setting it up again",
                    describe(response) if not response.ok else response.lines)  # fmt: skip
        self.setup()

    # -- sending ---------------------------------------------------------------------------

    def send(self, number: str, text: str) -> int:
        """Send `text` (GSM 7-bit, one message) to `number`; returns the message reference
        (`+CMGS: <mr>`)."""
        if not _NUMBER_RE.match(number):
            raise SmsError(f"not a phone number: {number!r} (digits, optional leading +)")
        if not text or len(text) > MAX_TEXT:
            raise SmsError(f"SMS text must be 1-{MAX_TEXT} characters, got {len(text)}")
        if bad := sorted(set(text) - _GSM_ASCII):
            raise SmsError(f"SMS text has characters outside the GSM alphabet: {''.join(bad)!r}")
        try:
            length, pdu = encode_submit(number, text)
        except PduError as exc:
            raise SmsError(f"SMS to {number}: {exc}") from exc
        with self._lock:
            self._ensure_pdu_mode()
            command = AtCommand(f"AT+CMGS={length}", SEND_TIMEOUT_S, data=pdu.encode() + CTRL_Z)
            response = self._call(command)
        if not response.ok:
            raise SmsError(f"SMS to {number} failed: {describe(response)}")
        for line in response.lines:
            if line.startswith("+CMGS:") and (reference := ascii_int(line[6:])) is not None:
                log.info("SMS sent to %s (reference %d)", number, reference)
                return reference
        raise SmsError(f"SMS to {number}: OK without +CMGS reference ({response.lines})")

    # -- worker ----------------------------------------------------------------------------

    def _on_urc(self, urc: Urc) -> None:
        """Port thread: queue the work."""
        if urc.name == "+CMTI":
            mem, _, number = urc.line.partition(":")[2].rpartition(",")
            index = ascii_int(number)
            if index is not None and mem.strip().strip('"') == self.storage:
                self._work.put(("read", index))
            elif index is not None:  # stored in the other store (during set-up): sweep both
                self._work.put(("setup", None))
            else:
                log.warning("SMS: malformed new-message URC %r; the next sweep reads the store",
                            urc.line)  # fmt: skip
        elif urc.name == "+CMT" and urc.data is not None:
            self._work.put(("routed", urc.data))
        elif urc.name == "SMS DONE":
            self._ready = False
            self._work.put(("setup", None))

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.sweep_s
        while True:
            try:
                item = self._work.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                item = ("sweep", None)
            if item is None:
                return
            kind, value = item
            try:
                if kind == "setup":
                    next_sweep = time.monotonic() + self.sweep_s
                    self.setup()
                elif kind == "sweep":
                    next_sweep = time.monotonic() + self.sweep_s
                    self.sweep()
                elif isinstance(value, int):
                    self.receive(value)
                elif isinstance(value, SmsData):
                    self._handle(None, value)
            except (SmsError, ChannelError) as exc:
                if kind == "setup" and not self._ready:
                    # A module still booting answers nothing; its SMS DONE sets up again.
                    log.warning(
                        "SMS: %s; set up again on the module's SMS DONE or in %g s",
                        exc,
                        max(0.0, next_sweep - time.monotonic()),
                    )
                else:
                    log.warning("SMS: %s", exc)
            except Exception:
                log.exception("SMS: unexpected error handling %s %r", kind, value)

    def _call(self, command: AtCommand) -> AtResponse:
        try:
            return self.channel.call(command)
        except ChannelError as exc:
            raise SmsError(f"{command.line.split('=')[0]}: {exc}") from exc

    def _must(self, line: str, what: str) -> AtResponse:
        response = self._call(AtCommand(line))
        if not response.ok:
            raise SmsError(f"{what}: {line.split('=')[0]}: {describe(response)}")
        return response


def _listed_index(header: str) -> int | None:
    """The `<index>` of a `+CMGL: <index>,...` header."""
    _, _, rest = header.partition(":")
    return ascii_int(rest.split(",", 1)[0])


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
        text = gsm_safe(f"{self.drone_id} {kind.upper()} {detail}".strip())[:MAX_TEXT]
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


def gsm_safe(text: str) -> str:
    """`text` with every character a notification cannot carry replaced by "?"."""
    return "".join(c if c in _GSM_ASCII else "?" for c in text)
