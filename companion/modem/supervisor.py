"""The A7670's bring-up and upkeep: a supervised state machine with a recovery ladder.

One thread drives the module through the stages of `ModemState.stage`:

    booting -> sim -> registering -> data -> mqtt -> up

- booting: `AT` is retried until the module answers (it ignores AT for seconds after
  power-up); the boot URCs `*ATREADY`, `+CPIN: READY`, `SMS DONE`, `PB DONE` arrive in any
  order, interleaved with anything, and are only noted (A76XX_AT_FACTS §0). Then `ATE0` and
  `AT+CMEE=2` (verbose errors; the engine maps numeric ones to the same texts).
- sim: `AT+CPIN?`; a PIN is entered once. A rejected PIN is never retried by itself (three
  wrong PINs burn the SIM into PUK state), no SIM and a PUK lock are final too: the stage
  becomes "failed" with the reason until `restart()` (§6.2.2).
- registering: `AT+CGDCONT=1,"IP",<apn>` first (LTE attaches with cid 1's APN), then
  `AT+CEREG=2`/`AT+CREG=2` for URCs and `AT+CEREG?`/`AT+CREG?` polls until home or roaming;
  signal (`AT+CSQ`, `AT+CPSI?`) and operator (`AT+COPS?`) are read on the way (§4.2, §5.2).
  Some firmware answers the CGDCONT write with ERROR while context 1 is active (after a
  ladder step, the module is still attached): if `AT+CGDCONT?` shows the APN already set,
  that is success; otherwise the radio goes off (AT+CFUN=0 drops the context), the APN is
  written and the radio comes back. An APN still refused then is a refusal, retried after
  `failed_retry_s`, never a halt that waits for a person.
- data: `AT+NETOPEN` (OK, then `+NETOPEN: 0`; "already opened" counts as success, §15.2.1).
- mqtt: the attached `LinkClient` (the `AtMqttTransport`) connects; without one, skipped.

While up it applies URCs and polls signal and registration every `poll_s`. Failure URCs mean
different things and recovery matches them: `+CMQTTCONNLOST` and `+IPCLOSE` lose one
connection (reconnect MQTT only); `+CMQTTNONET`, `+CIPEVENT: NETWORK CLOSED UNEXPECTEDLY` and
`+CGEV: NW DEACT` lose the data context (NETOPEN and CMQTTSTART again); `*ATREADY` out of the
blue means the module rebooted (everything again).

Failures fall in three kinds. Final ones (wrong PIN, no SIM, PUK) stop the machine in
"failed". Refusals by someone else (APN refused by the network, broker refused the
connection) are "failed" too but retried after `failed_retry_s`, since an operator may fix
the far side. Everything else (commands timing out, registration lost too long, data that will
not come up) climbs the recovery ladder: re-register (`AT+COPS=0`) -> radio toggle
(`AT+CFUN=0`, `AT+CFUN=1`) -> module reset (`AT+CRESET`, boot sync) -> power-key pulse through
the board's hook (boot sync). Each step is bounded by its commands' timeouts and the next
bring-up attempt, logged, counted in `recoveries` and published as `recovery_step`; a
successful bring-up resets the ladder, an exhausted one starts over after `retry_s`. Nothing
escapes the thread: every error ends in the log and in `ModemState.error`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from companion.modem.at_engine import AtCommand, AtResponse, Urc, ascii_int, command_label
from companion.modem.channel import AtChannel, ChannelError
from companion.modem.responses import (
    already_open,
    check_apn,
    csq_text_to_dbm,
    describe,
    info_value,
    parse_cpsi,
)
from companion.modem.state import RECOVERY_STEPS, initial_state

log = logging.getLogger(__name__)

#: +CEREG/+CREG <stat> -> ModemState.registration (A76XX AT Command Manual V1.09 §4.2.1).
REGISTRATION = {
    0: "not registered",
    1: "home",
    2: "searching",
    3: "denied",
    4: "unknown",
    5: "roaming",
    6: "home",  # SMS only
    7: "roaming",  # SMS only
    11: "not registered",  # emergency bearer services only
}
_REGISTERED = {1, 5}

_NEXT = {
    "booting": "sim",
    "sim": "registering",
    "registering": "data",
    "data": "mqtt",
    "mqtt": "up",
}

#: +COPS <AcT> -> ModemState.rat (§4.2.2).
_ACT = {0: "GSM", 2: "WCDMA", 7: "LTE"}

#: +CME ERROR codes with which a network refuses a PDP context for its APN (§28.3).
APN_REFUSALS = {107, 111, 112, 113, 132, 133, 134, 148, 149}

_CME_NO_SIM = 10
_CME_WRONG_PIN = 16  # "incorrect password": the SIM counted a failed attempt


@dataclass(frozen=True)
class SupervisorTimeouts:
    """Bounds for each step, in seconds; defaults follow the manual's Max Response Times and
    what reference drivers wait (A76XX_AT_FACTS §8). Tests shrink them."""

    probe_s: float = 1.0  # one `AT` liveness probe (answers take ~40-90 ms)
    command_s: float = 9.0  # 27.007 commands (CPIN, CSQ, CEREG, CGDCONT, CPSI, ...)
    boot_s: float = 100.0  # module answering AT after power-up or reset
    sim_s: float = 30.0  # SIM busy/failure right after boot until +CPIN: READY
    register_s: float = 120.0  # registration at bring-up
    lost_s: float = 120.0  # registration lost this long while up -> ladder
    cops_s: float = 60.0  # AT+COPS
    cfun_s: float = 30.0  # AT+CFUN
    reset_s: float = 9.0  # AT+CRESET's OK
    netopen_s: float = 120.0  # +NETOPEN: <err> after OK (AT+CIPTIMEOUT default)
    poll_s: float = 15.0  # signal and registration refresh while up
    retry_s: float = 5.0  # pause before retrying a failed stage / restarting the ladder
    failed_retry_s: float = 120.0  # APN or broker refused: try again this much later
    settle_s: float = 1.0  # pause between repeated queries (AT at boot, SIM busy, CEREG?)


class LinkSetupError(Exception):
    """A link client (MQTT) could not come up. `kind`: "refused" (the far side said no:
    broker refused, bad credentials), "timeout" (the module stopped answering), or "failed"
    (anything else, worth retrying)."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


class LinkClient(Protocol):
    """What rides on the data link (the MQTT transport): brought up by the supervisor's
    thread after NETOPEN, told when the link under it is lost."""

    def establish(self) -> None: ...  # raises LinkSetupError

    def link_lost(self, scope: str) -> None: ...  # "connection" | "data" | "module"


class _Failure(Exception):
    """A bring-up step failed; subclasses say how to go on."""


class _Final(_Failure):
    """Only a person can fix this (wrong PIN, no SIM): stop until restart()."""


class _Refused(_Failure):
    """The far side refused (APN, broker): stop, retry after failed_retry_s."""


class _Retry(_Failure):
    """Try the stage again after retry_s, no ladder (e.g. broker unreachable)."""


class _Fault(_Failure):
    """The module misbehaves: climb the recovery ladder."""


class ModemSupervisor:
    """Brings the A7670 on `channel` up and keeps it up; publishes `ModemState` changes.

    `power_key`, if given, pulses the module's PWRKEY line (boards differ: a GPIO through a
    transistor, typically 100 ms low for the A7670); without it the ladder's last step is
    skipped with a log line.
    """

    def __init__(
        self,
        channel: AtChannel,
        publish: Callable[[object], None],
        *,
        apn: str,
        pin: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        power_key: Callable[[], None] | None = None,
        timeouts: SupervisorTimeouts | None = None,
    ) -> None:
        check_apn(apn)
        if pin is not None and not (pin.isdigit() and 4 <= len(pin) <= 8):
            raise ValueError(f"SIM PIN must be 4 to 8 digits, got {len(pin)} characters")
        self.channel = channel
        self.publish = publish
        self.apn = apn
        self.clock = clock
        self.power_key = power_key
        self.timeouts = timeouts or SupervisorTimeouts()
        self.state = initial_state(clock())
        self.boot_seen: set[str] = set()
        self._pin = pin
        self._pin_rejected = False
        self._client: LinkClient | None = None
        self._events: queue.Queue[Urc | str] = queue.Queue()
        self._resume = "booting"
        self._expect_boot = True  # until the SIM is ready, boot URCs are expected
        self._data_dirty = False
        self._ladder = 0
        self._mqtt_failures = 0
        self._lost_since: float | None = None
        self._next_poll = 0.0
        self._halted = False
        self._restart_requested = False
        self._port_error = ""  # why the last command could not even be sent
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public API ------------------------------------------------------------------------

    def attach(self, client: LinkClient) -> None:
        """Bring `client` up after the data link, and tell it when the link is lost."""
        self._client = client
        if self.state.stage == "up":
            self._events.put("client attached")

    def detach(self, client: LinkClient) -> None:
        if self._client is client:
            self._client = None
            self._update(mqtt_up=False)

    def start(self) -> ModemSupervisor:
        """Subscribe to the channel's URCs and run the supervising thread."""
        self.channel.subscribe_urc(self._on_urc)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="modem supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._events.put("stop")
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        self.channel.unsubscribe_urc(self._on_urc)
        self._update(stage="off", data_up=False, mqtt_up=False)

    @property
    def running(self) -> bool:
        """Whether the supervising thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> ModemSupervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self, *, pin: str | None = None) -> None:
        """Leave "failed" and bring the module up again, e.g. after a person fixed the SIM
        or the PIN (`pin` replaces the configured one and allows one new attempt)."""
        if pin is not None:
            self._pin = pin
            self._pin_rejected = False
        self._restart_requested = True  # applied by the supervisor's own thread, in step()
        self._events.put("restart")

    def report_unresponsive(self, what: str) -> None:
        """A client saw a command time out (e.g. mid-publish): check the module now."""
        self._events.put(f"unresponsive: {what}")

    def report_lost(self, scope: str, why: str) -> None:
        """A client learned that a connection ("connection") or the data context ("data") is
        gone without a URC saying so (e.g. +CMQTTPUB: 0,11 "no connection")."""
        self._events.put(f"lost {scope}: {why}")

    # -- bring-up -------------------------------------------------------------------------

    def _bring_up(self, start: str = "booting") -> None:
        """Run the stages from `start` to "up"; raises a `_Failure` subclass on failure. A URC
        that takes away what an earlier stage built (a reboot, the data context) sets the
        machine back to that stage, and it carries on from there."""
        self._resume = start
        while self._resume != "up":
            stage = self._resume
            self._update(stage=stage)
            getattr(self, f"_stage_{stage}")()
            if self._resume == stage:
                self._resume = _NEXT[stage]
        self._ladder = 0
        self._mqtt_failures = 0
        self._update(stage="up", error=None, recovery_step=None)
        log.info(
            "modem up: %s, %s, %s dBm",
            self.state.operator,
            self.state.rat,
            self.state.rssi_dbm,
        )

    def _stage_booting(self) -> None:
        t = self.timeouts
        deadline = self.clock() + t.boot_s
        while True:
            response = self._try(AtCommand("AT", timeout_s=t.probe_s))
            if response is not None and response.ok:
                break
            if self.clock() >= deadline:
                cause = f" ({self._port_error})" if response is None else ""
                raise _Fault(f"module not answering AT for {t.boot_s:g} s{cause}")
            self._pause(t.settle_s)
        if self.boot_seen:
            log.info("module answers (boot URCs so far: %s)", ", ".join(sorted(self.boot_seen)))
        self._command("ATE0")
        self._command("AT+CMEE=2")

    def _stage_sim(self) -> None:
        deadline = self.clock() + self.timeouts.sim_s
        while True:
            response = self._at("AT+CPIN?")
            if response.ok:
                code = info_value(response, "+CPIN") or "unknown"
                if code == "READY":
                    self._update(sim="READY")
                    self._expect_boot = False  # boot URCs from now on mean a reboot
                    return
                self._update(sim=code)
                if code == "SIM PIN":
                    self._enter_pin()
                    if self.clock() >= deadline:  # a PIN the SIM keeps not taking (busy)
                        raise _Fault(f"SIM still asks for its PIN after {self.timeouts.sim_s:g} s")
                    continue
                if code == "SIM PUK":
                    raise _Final(
                        "SIM is PUK-locked (+CPIN: SIM PUK): unlock it with the PUK in a phone"
                    )
                raise _Final(f"SIM asks for {code}, which this driver cannot enter")
            error = response.error
            assert error is not None
            if error.kind == "timeout":
                raise _Fault("module not answering AT+CPIN?")
            if (error.kind == "cme" and error.code == _CME_NO_SIM) or "not inserted" in error.text:
                self._update(sim="absent")
                raise _Final(f"no SIM card ({describe(response)})")
            if self.clock() >= deadline:
                self._update(sim="failure")
                raise _Fault(
                    f"SIM not ready after {self.timeouts.sim_s:g} s ({describe(response)})"
                )
            self._pause(self.timeouts.settle_s)

    def _enter_pin(self) -> None:
        if self._pin is None:
            raise _Final("SIM needs a PIN and none is configured")
        if self._pin_rejected:
            raise _Final("SIM PIN was rejected before; not trying again (would burn the PUK)")
        response = self._at(f'AT+CPIN="{self._pin}"')
        error = response.error
        if error is None:
            log.info("SIM PIN accepted")
        elif error.kind == "timeout":
            raise _Fault("module not answering AT+CPIN=<pin>")
        elif error.code == _CME_WRONG_PIN or "incorrect password" in error.text:
            self._pin_rejected = True
            raise _Final(f"SIM PIN rejected ({describe(response)})")
        else:  # e.g. SIM busy: the PIN was not checked, so asking again costs no attempt
            log.warning("SIM PIN not taken (%s); asking the SIM again", describe(response))
        self._pause(self.timeouts.settle_s)

    def _stage_registering(self) -> None:
        self._set_apn()
        self._at("AT+CEREG=2")
        self._at("AT+CREG=2")
        t = self.timeouts
        deadline = self.clock() + t.register_s
        while True:
            self._query_registration()
            if self.state.registered:
                break
            if self.clock() >= deadline:
                raise _Fault(
                    f"not registered after {t.register_s:g} s "
                    f"(registration: {self.state.registration})"
                )
            self._pause(t.settle_s)
        self._lost_since = None
        self._refresh_signal()
        self._query_operator()

    def _set_apn(self) -> None:
        """`AT+CGDCONT=1,"IP",<apn>`, coping with firmware that refuses the write while the
        context is active (see the module docstring)."""
        line = f'AT+CGDCONT=1,"IP","{self.apn}"'
        response = self._at(line)
        if response.ok:
            return
        what = f"APN {self.apn!r} not accepted by the module"
        if response.error is not None and response.error.kind in ("timeout", "reset"):
            raise _Fault(f"{what}: {describe(response)}")
        current = self._context_apn()
        if current is not None and current.lower() == self.apn.lower():
            log.info("AT+CGDCONT refused (%s), but context 1 already has APN %r",
                     describe(response), current)  # fmt: skip
            return
        log.warning("AT+CGDCONT refused (%s) with APN %r in context 1: writing it with the "
                    "radio off", describe(response), current)  # fmt: skip
        t = self.timeouts
        self._at("AT+CFUN=0", timeout_s=t.cfun_s, check=True)
        try:
            retry = self._at(line)
        finally:
            self._at("AT+CFUN=1", timeout_s=t.cfun_s, check=True)
        if not retry.ok:
            raise _Refused(f"{what} ({describe(retry)})")

    def _context_apn(self) -> str | None:
        """The APN of context 1 as `AT+CGDCONT?` lists it (§5.2.5), None if unknown."""
        response = self._at("AT+CGDCONT?")
        for line in response.lines if response.ok else ():
            fields = line.partition(":")[2].split(",")
            if line.startswith("+CGDCONT:") and len(fields) >= 3 and ascii_int(fields[0]) == 1:
                return fields[2].strip().strip('"')
        return None

    def _stage_data(self) -> None:
        if not self.state.registered:
            self._resume = "registering"  # e.g. coverage lost: NETOPEN cannot succeed
            return
        query = self._at("AT+NETOPEN?")
        if query.ok and info_value(query, "+NETOPEN") == "1":
            if not self._data_dirty:
                self._update(data_up=True)
                return
            # The network closed the context under us, but the stack still says open:
            # close it first, as the manual asks after +CIPEVENT (§15.4).
            self._at("AT+NETCLOSE", result_urc="+NETCLOSE", urc_timeout_s=self.timeouts.netopen_s)
        response = self._at(
            "AT+NETOPEN", result_urc="+NETOPEN", urc_timeout_s=self.timeouts.netopen_s
        )
        if response.ok or already_open(response):
            self._data_dirty = False
            self._update(data_up=True)
            log.info("data up (APN %r)", self.apn)
            return
        error = response.error
        assert error is not None
        if error.kind in ("timeout", "reset"):
            raise _Fault(f"data did not come up: AT+NETOPEN {describe(response)}")
        refusal = error.kind == "cme" and error.code in APN_REFUSALS
        if not self.state.registered and not refusal:
            raise _Retry(f"data did not come up while not registered ({describe(response)})")
        raise _Refused(f"APN {self.apn!r} refused by the network ({describe(response)})")

    def _stage_mqtt(self) -> None:
        client = self._client
        if client is None or self.state.mqtt_up:
            return
        try:
            client.establish()
        except LinkSetupError as exc:
            if exc.kind == "refused":
                raise _Refused(str(exc)) from exc
            if exc.kind == "timeout":
                raise _Fault(str(exc)) from exc
            self._mqtt_failures += 1
            if self._mqtt_failures >= 3:
                self._mqtt_failures = 0
                raise _Fault(f"MQTT will not come up: {exc}") from exc
            raise _Retry(str(exc)) from exc
        self._update(mqtt_up=True)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except ChannelError as exc:
                self._update(error=str(exc))
                self._pause(self.timeouts.retry_s)
            except Exception as exc:  # never let the supervisor die: log, show, go on
                log.exception("modem supervisor: unexpected error")
                self._update(error=f"internal error: {exc!r}")
                self._pause(self.timeouts.retry_s)

    def step(self) -> None:
        """One turn of the supervising loop: a bring-up attempt (with what its failure
        calls for) or, while up, one watch period. The thread calls it forever; tests may
        call it directly."""
        if self._restart_requested:
            self._restart_requested = False
            self._halted = False
            self._resume = "booting"
        if self._halted:
            self._pause(self.timeouts.poll_s, until=lambda: self._restart_requested)
            return
        if not self.channel.is_open and not self.channel.wait_open(self.timeouts.probe_s):
            # Nothing to recover on a module we cannot reach: say why, wait for the port.
            self._fail("off", self.channel.error or "modem port not open", logging.WARNING)
            self._lose("module")
            self._pause(self.timeouts.retry_s)
            return
        if self._resume == "up":
            self._watch()
            return
        try:
            self._bring_up(self._resume)
        except _Final as exc:
            self._halted = True
            self._fail("failed", str(exc), logging.ERROR)
        except _Refused as exc:
            self._fail("failed", str(exc), logging.ERROR)
            self._pause(self.timeouts.failed_retry_s, until=lambda: self._restart_requested)
        except _Retry as exc:
            self._fail(self.state.stage, str(exc), logging.WARNING)
            self._pause(self.timeouts.retry_s)
            if self._resume == "mqtt":
                self._resume = "data"  # MQTT errors often mean the data link is gone: check
        except _Fault as exc:
            self._fail(self.state.stage, str(exc), logging.WARNING)
            self._recover(str(exc))

    def _fail(self, stage: str, message: str, level: int) -> None:
        log.log(level, "modem: %s", message)
        self._update(stage=stage, error=message)

    def _watch(self) -> None:
        """Up: apply URCs as they come, refresh signal and registration every poll_s."""
        now = self.clock()
        if now >= self._next_poll:
            self._next_poll = now + self.timeouts.poll_s
            try:
                self._refresh_signal()
                self._query_registration()
            except _Fault as exc:
                self._fail("recovering", str(exc), logging.WARNING)
                self._recover(str(exc))
                return
        if self._lost_since is not None and self.clock() - self._lost_since > self.timeouts.lost_s:
            message = f"registration lost for over {self.timeouts.lost_s:g} s"
            self._fail("recovering", message, logging.WARNING)
            self._lost_since = None
            self._recover(message)
            return
        self._pause(min(1.0, max(0.0, self._next_poll - self.clock())))

    def _recover(self, reason: str) -> None:
        """Climb one rung (more if a rung cannot even be tried) and set where to resume.
        Past the last rung, wait `retry_s` and resume at boot sync: the next failure starts
        the ladder again from the bottom."""
        while self._ladder < len(RECOVERY_STEPS) and not self._stop.is_set():
            step = RECOVERY_STEPS[self._ladder]
            self._ladder += 1
            log.warning(
                "modem recovery %d/%d: %s (%s)", self._ladder, len(RECOVERY_STEPS), step, reason
            )
            self._lose("module" if self._ladder > 2 else "data")
            self._update(
                stage="recovering", recovery_step=step, recoveries=self.state.recoveries + 1
            )
            try:
                self._resume = self._ladder_step(step)
                return
            except (_Failure, ChannelError) as exc:
                reason = f"{step} failed: {exc}"
                log.warning("modem recovery: %s", reason)
                self._update(error=reason)
        if self._stop.is_set():
            return
        log.error("modem recovery ladder exhausted (%s); starting over", reason)
        self._ladder = 0
        self._resume = "booting"
        self._pause(self.timeouts.retry_s)

    def _ladder_step(self, step: str) -> str:
        t = self.timeouts
        if step == "re-register":
            self._probe()
            self._at("AT+COPS=0", timeout_s=t.cops_s, check=True)
            return "registering"
        if step == "radio toggle":
            self._probe()
            self._at("AT+CFUN=0", timeout_s=t.cfun_s, check=True)
            self._at("AT+CFUN=1", timeout_s=t.cfun_s, check=True)
            return "sim"
        if step == "module reset":
            self._at("AT+CRESET", timeout_s=t.reset_s, check=True)
            self.channel.reset_engine("AT+CRESET")
            self._expect_reboot()
            return "booting"
        if self.power_key is None:
            raise _Fault("no power-key hook configured for this board")
        self.power_key()
        self.channel.reset_engine("power-key pulse")
        self._expect_reboot()
        return "booting"

    def _expect_reboot(self) -> None:
        self._expect_boot = True
        self.boot_seen.clear()
        self._update(sim=None, registered=False, registration=None)

    def _probe(self) -> None:
        response = self._try(AtCommand("AT", timeout_s=self.timeouts.probe_s))
        if response is None or not response.ok:
            raise _Fault("module not answering AT")

    # -- URCs ------------------------------------------------------------------------------

    def _on_urc(self, urc: Urc) -> None:
        """Port thread: only queue; the supervisor thread applies it."""
        self._events.put(urc)

    def _pause(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Wait `seconds`, applying URCs as they arrive; end early on stop or `until()`."""
        end = self.clock() + seconds
        while not self._stop.is_set():
            if until is not None and until():
                return
            remaining = end - self.clock()
            if remaining <= 0:
                return
            try:
                event = self._events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            self._apply(event)

    def _drain(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._apply(event)

    def _apply(self, event: Urc | str) -> None:
        if isinstance(event, str):
            if event.startswith("unresponsive") and self._resume == "up":
                log.warning("modem: %s; probing", event)
                self._next_poll = 0.0
            elif event.startswith("lost "):
                scope, why = event[5:].split(": ", 1)
                log.warning("modem: %s lost (%s)", scope, why)
                self._lose(scope)
            elif event == "client attached" and self._resume == "up":
                self._resume = "mqtt"
            return
        self.handle_urc(event)

    def handle_urc(self, urc: Urc) -> None:
        """Apply one URC to the state and decide what recovery it needs (supervisor thread;
        tests call it directly)."""
        name, line = urc.name, urc.line
        rest = line.split(":", 1)[1].strip() if ":" in line else ""
        if name in ("*ATREADY", "RDY", "SMS DONE", "PB DONE"):
            self.boot_seen.add(name)
            if name in ("*ATREADY", "RDY") and not self._expect_boot:
                log.warning("modem rebooted by itself (%s)", line)
                self.channel.reset_engine("module rebooted")
                self._lose("module")
                self._expect_reboot()
        elif name == "+CPIN":
            self.boot_seen.add(line.strip())
            absent = rest in ("SIM REMOVED", "NOT INSERTED")
            self._update(sim="absent" if absent else rest)
        elif name in ("+CEREG", "+CREG", "+CGREG"):
            stat = ascii_int(rest.split(",")[0])
            if stat is not None:
                self._set_registration(stat)
        elif name == "+CSQ":
            self._update(rssi_dbm=csq_text_to_dbm(rest))
        elif name in ("+CMQTTCONNLOST", "+IPCLOSE"):
            log.warning("modem: connection lost (%s); reconnecting MQTT", line)
            self._lose("connection")
        elif name in ("+CMQTTNONET", "+CMQTTSTOP") or (
            name == "+CIPEVENT" and "NETWORK CLOSED" in rest
        ):
            log.warning("modem: data context lost (%s); bringing data up again", line)
            self._lose("data")
        elif name == "+CGEV":
            if "DEACT" in rest and rest.startswith("NW"):
                log.warning("modem: network deactivated the context (%s)", line)
                self._lose("data")
        elif name == "":
            log.debug("modem: unsolicited line %r", line)

    def _lose(self, scope: str) -> None:
        """Something under the link is gone: mark it down, tell the client, resume below it."""
        order = ("booting", "sim", "registering", "data", "mqtt", "up")
        if scope == "connection":
            resume = "mqtt"
            self._update(mqtt_up=False)
        else:
            resume = "booting" if scope == "module" else "data"
            self._data_dirty = True
            self._update(mqtt_up=False, data_up=False)
        if self._client is not None:
            self._client.link_lost(scope)
        if order.index(resume) < order.index(self._resume):
            self._resume = resume
            if self.state.stage == "up":
                self._update(stage=resume)

    def _set_registration(self, stat: int) -> None:
        registration = REGISTRATION.get(stat, "unknown")
        registered = stat in _REGISTERED
        if registered:
            self._lost_since = None
        elif self.state.registered or self._lost_since is None:
            self._lost_since = self.clock()
        if registered != self.state.registered:
            log.info("modem registration: %s", registration)
        self._update(registered=registered, registration=registration)

    # -- queries ---------------------------------------------------------------------------

    def _query_registration(self) -> None:
        for command, prefix in (("AT+CEREG?", "+CEREG"), ("AT+CREG?", "+CREG")):
            response = self._at(command)
            fields = (info_value(response, prefix) or "").split(",")
            stat = ascii_int(fields[1]) if len(fields) >= 2 else None
            if response.ok and stat is not None:
                self._set_registration(stat)
                if self.state.registered:
                    return

    def _refresh_signal(self) -> None:
        csq = self._at("AT+CSQ")
        if csq.ok:
            self._update(rssi_dbm=csq_text_to_dbm(info_value(csq, "+CSQ") or ""))
        cpsi = self._at("AT+CPSI?")
        if cpsi.ok and (value := info_value(cpsi, "+CPSI")) is not None:
            rat, rsrp, rsrq, sinr = parse_cpsi(value)
            self._update(rat=rat, rsrp_dbm=rsrp, rsrq_db=rsrq, sinr_db=sinr)

    def _query_operator(self) -> None:
        response = self._at("AT+COPS?", timeout_s=self.timeouts.cops_s)
        value = info_value(response, "+COPS")
        if not response.ok or value is None:
            return
        fields = value.split(",")
        if len(fields) >= 3:
            self._update(operator=fields[2].strip().strip('"'))
        act = ascii_int(fields[3]) if len(fields) >= 4 else None
        if act is not None and self.state.rat is None:
            self._update(rat=_ACT.get(act, "unknown"))

    # -- commands --------------------------------------------------------------------------

    def _try(self, command: AtCommand) -> AtResponse | None:
        """`call`, with a closed port answered by None (the caller retries or escalates)."""
        try:
            return self.channel.call(command)
        except ChannelError as exc:
            log.debug("modem: %s", exc)
            self._port_error = str(exc)
            return None

    def _at(
        self,
        line: str,
        *,
        timeout_s: float | None = None,
        result_urc: str | None = None,
        urc_timeout_s: float = 30.0,
        check: bool = False,
    ) -> AtResponse:
        """Send one command; a timeout is a fault (the module stopped answering). With
        `check`, any other error is a fault too."""
        command = AtCommand(
            line,
            timeout_s=self.timeouts.command_s if timeout_s is None else timeout_s,
            result_urc=result_urc,
            urc_timeout_s=urc_timeout_s,
        )
        response = self.channel.call(command)
        self._drain()
        error = response.error
        if error is not None and (
            check or (error.kind in ("timeout", "reset") and result_urc is None)
        ):
            # Named without its parameters: a PIN or a password must not reach the state.
            label = command_label(line)
            text = describe(response)
            raise _Fault(text if text.startswith(label) else f"{label}: {text}")
        return response

    def _command(self, line: str) -> None:
        self._at(line, check=True)

    # -- state -----------------------------------------------------------------------------

    def _update(self, **changes: object) -> None:
        """Apply `changes`; publish a new snapshot only if something changed."""
        with self._state_lock:
            current = self.state
            if all(getattr(current, k) == v for k, v in changes.items()):
                return
            self.state = dataclasses.replace(current, **changes, at=self.clock())  # type: ignore[arg-type]
            new = self.state
        with contextlib.suppress(Exception):
            self.publish(new)
