"""A sans-I/O SIMCom A7670 LTE module: AT commands in, responses and URCs out, on time.

`A7670.receive(data, now)` takes what the host wrote on the UART; `A7670.output(now)` returns
what the module has said by `now`. No clock, no thread, no socket: times are passed in, and
the module's MQTT stack is a bridge object (`sim.modem.mqtt_bridge`; a real broker through
`PahoBridge`, or a fake in unit tests) whose answers become URCs on the next `output()`.
`sim.modem.pty_runner.A7670Pty` puts it on a pty. The MQTT and SMS command handlers live
in `sim.modem.mqtt_commands` and `sim.modem.sms_commands`; this module holds the UART side,
boot, SIM, registration, data and the faults.

What it does follows the A76XX AT Command Manual V1.09 and real sessions
(shared/reference/a76xx/A76XX_AT_FACTS.md, transcripts/):

* Framing: command lines end in CR; echo is on after boot (ATE0 turns it off); every
  response and URC is `\\r\\n<line>\\r\\n`, information lines then the final result code
  (§1.4, §1.5). Lines without the `AT` prefix are ignored, as the module does; a command the
  emulator does not know answers ERROR. The module executes one command at a time: lines
  that arrive while it is busy wait for the previous final result code.
* Boot: silent (AT ignored) for `boot_s`, then `*ATREADY: 1`, `+CPIN: ...` and, at random
  (seeded) times after the SIM is ready, `SMS DONE`, `PB DONE` and, once registered,
  `+CGEV: EPS PDN ACT 1` — so their order varies as in the logs. Until the SIM answers,
  `AT+CPIN?` gives `+CME ERROR: 13` (SIM failure), exactly as [LOG-AZ] shows.
* SIM: "ready"; with `pin`, `+CPIN: SIM PIN` until `AT+CPIN=<pin>` (a wrong PIN is
  `+CME ERROR: 16` "incorrect password"; three wrong ones leave `SIM PUK`, cleared by
  `AT+CPIN=<puk>,<newpin>`, ten wrong PUKs block the SIM: 13); "absent" gives
  `+CME ERROR: 10` (with a `+CPIN: SIM REMOVED` URC at boot); "failure" gives 13. Errors
  follow AT+CMEE (0 plain ERROR, 1 numeric — the default seen in [LOG-AZ] — 2 verbose).
* Registration: `register_s` after the SIM is ready (and after radio on or coverage back)
  the module registers home (stat 1) on "vodafone UK" (234-15), LTE; `+CEREG`/`+CREG`/
  `+CGREG` URCs when enabled with `=1` or `=2`. Signal in `+CSQ`/`+CPSI?` comes from
  `signal` (`set_signal`); without service `+CSQ: 99,99` and `+CPSI: NO SERVICE,Online`
  (`Low Power Mode` with CFUN=0).
* APN: `apns` lists the APNs the network accepts (None: any). With an APN it refuses in
  context 1 (`AT+CGDCONT=1,"IP","<apn>"`; an empty APN means "network default" and is
  accepted), data cannot come up: `AT+NETOPEN` gives `OK` then `+NETOPEN: 1` (network
  failure, §15.3.2), `AT+CMQTTSTART` gives `OK` then `+CMQTTSTART: 7` (network open fail,
  §18.3.1), and `AT+CGACT=1,1` gives `+CME ERROR: 133` (requested service option not
  subscribed — ESM cause #33, what networks send for an APN the subscription lacks, §28.3).
* MQTT (§18): START/STOP/ACCQ/REL/CFG/SSLCFG/WILLTOPIC/WILLMSG/CONNECT/DISC/TOPIC/PAYLOAD/
  PUB/SUBTOPIC/SUB/UNSUBTOPIC/UNSUB with the manual's result forms and <err> numbers.
  Choices where the manual is silent: CONNECT on a connected client is `<err>` 19 ("client
  is used"), REL of a connected client 19, STOP with a client still acquired 21 ("client
  not released"), a second operation while one is pending 14 ("client is busy"). Data
  prompts are `\\r\\n>` (no space, as in [LOG-AZ] `>devices/...`), the data is read by
  length and not echoed. Incoming messages come as the RXSTART/RXTOPIC/RXPAYLOAD/RXEND
  sequence, payload chunks at most 1500 bytes ([LGFORK]), no RXPAYLOAD for an empty one.
  Host-given timeouts (pub_timeout, DISC timeout, CFG "optimeout") are in real seconds and
  give <err> 17; the module's own latencies scale with `time_scale`.
* SMS (§9, `sim.modem.sms_commands`): PDU mode (the default) and text mode, AT+CSDH, two
  stores selected with AT+CPMS ("SM" 50 messages, "ME" 180), CNMI with the manual's
  constraints, `+CMTI: "<mem3>",<n>` (mt=1) or `+CMT:` (mt=2), CMGS with the `\\r\\n> `
  prompt (a PDU or text, echoed when echo is on), Ctrl-Z sends, ESC cancels; CMGR marks
  read; CMGD; CMGL. A message longer than one SMS arrives as a concatenated message, one
  stored part each. CMGF, CPMS and CNMI are AUTO_SAVE: they survive resets, as do the stored
  messages and the PIN counters.
* Faults: `set_coverage`, `drop_mqtt`, `hang`, `power_key`, `garble_probability`,
  `slow_factor`, `deliver_sms`, `refuse_cgdcont_while_active` (see each). On coverage loss
  the module reports, in order, `+CEREG: 2` (if enabled), `+CGEV: NW PDN DEACT 1`,
  `+CMQTTCONNLOST: <i>,3` per connected client, `+CIPEVENT: NETWORK CLOSED UNEXPECTEDLY` if
  NETOPEN was done, and `+CMQTTNONET` if the MQTT service was started (it then has to be
  started again). A hang or a reset drops the broker connections without DISCONNECT, so the
  broker publishes the wills at once (a real broker would after 1.5 x keep-alive).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import ClassVar

from sim.modem.at_command import AtCommand, AtSyntaxError, DataWait, ModemError, parse_line
from sim.modem.mqtt_bridge import MqttBridge
from sim.modem.mqtt_commands import MqttClient, MqttCommands
from sim.modem.sms_commands import SmsCommands
from sim.modem.sms_pdu import split
from sim.modem.sms_store import ME_CAPACITY, SIM_CAPACITY, SmsStore, SmsStoreFull

CTRL_Z, ESC, BACKSPACE = 0x1A, 0x1B, 0x08

#: Verbose texts (AT+CMEE=2) of the +CME ERROR codes the emulator gives (§28.3).
CME_TEXT = {
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    16: "incorrect password",
    30: "no network service",
    50: "Incorrect parameters",
    133: "requested service option not subscribed",
}
#: ... and of the +CMS ERROR codes (§28.4).
CMS_TEXT = {
    302: "Operation not allowed",
    303: "Operation not supported",
    304: "Invalid PDU mode parameter",
    305: "Invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    316: "SIM PUK required",
    321: "Invalid memory index",
    322: "Memory full",
    331: "no network service",
}

OPERATOR_LONG, OPERATOR_SHORT, OPERATOR_NUMERIC = "vodafone UK", "voda UK", "23415"
TAC, CELL_ID = "1A2B", "07B0C1D5"
IMSI = "234150123456789"
PIN_TRIES, PUK_TRIES = 3, 10
#: Host bytes the module buffers while busy; more than that overflows its UART buffer.
RX_BUFFER = 16 * 1024


@dataclass
class Signal:
    """Radio conditions while registered; CSQ and CPSI are derived from them (§3.2.2, §4.2.9)."""

    rssi_dbm: int = -59
    rsrp_dbm: int = -85
    rsrq_db: float = -12.5
    sinr_db: int = 5

    @property
    def csq(self) -> int:
        return max(0, min(31, round((self.rssi_dbm + 113) / 2)))

    def cpsi(self) -> str:
        rsrq = round(self.rsrq_db * 2 + 40)
        rsrp = self.rsrp_dbm + 140
        rssi = self.rssi_dbm + 110
        return (
            f"LTE,Online,234-15,0x{TAC},{int(CELL_ID, 16)},301,EUTRAN-BAND20,6300,5,5,"
            f"{rsrq},{rsrp},{rssi},{self.sinr_db}"
        )


class A7670(MqttCommands, SmsCommands):
    def __init__(
        self,
        *,
        bridge: MqttBridge | None = None,
        pin: str | None = None,
        puk: str = "12345678",
        sim: str = "ready",
        apns: set[str] | None = None,
        seed: int = 0,
        boot_s: float = 3.0,
        register_s: float = 2.0,
        time_scale: float = 1.0,
    ) -> None:
        if sim not in ("ready", "absent", "failure"):
            raise ValueError(f"sim must be 'ready', 'absent' or 'failure', not {sim!r}")
        self.bridge = bridge
        self.apns = apns
        self.boot_s = boot_s
        self.register_s = register_s
        self.time_scale = time_scale
        #: Probability that each output byte is corrupted (a noisy UART).
        self.garble_probability = 0.0
        #: Multiplies every module latency (an overloaded module).
        self.slow_factor = 1.0
        #: Answer ERROR to an AT+CGDCONT that changes context 1 while it is active, as some
        #: firmware does (issue 10: a module seen refusing it after a radio toggle); the
        #: manual is silent and [ISS#1] shows OK for the same APN, which this keeps.
        self.refuse_cgdcont_while_active = False
        self.signal = Signal()
        #: (destination, text) of every SMS the module sent.
        self.sent_sms: list[tuple[str, str]] = []
        # The stores survive resets: the SIM is a card, "ME" is flash.
        self._stores = {"SM": SmsStore(SIM_CAPACITY), "ME": SmsStore(ME_CAPACITY)}
        self._concat_ref = 0
        imei_rng = random.Random(seed + 2)
        self.imei = "86" + "".join(str(imei_rng.randrange(10)) for _ in range(13))
        self._rng = random.Random(seed)
        self._garble_rng = random.Random(seed + 1)
        # SIM card (survives resets)
        self._sim_kind = sim
        self._pin = pin
        self._puk = puk
        self._pin_tries = PIN_TRIES
        self._puk_tries = PUK_TRIES
        self._sim_locked = "SIM PIN" if pin is not None else None
        # AUTO_SAVE settings (survive resets)
        self._cgdcont: dict[int, tuple[str, str]] = {1: ("IP", "")}
        self._cmgf = 0
        self._cpms = ("SM", "SM", "SM")
        self._cnmi = (2, 1, 0, 0, 0)
        # environment
        self._coverage = True
        self._hung = False
        self._now = 0.0
        self._started = False
        self._timers: list[tuple[float, int, int, Callable[[float], None]]] = []
        self._seq = 0
        self._epoch = 0  # bumped at every reboot: older timers are void
        self._out = bytearray()
        self._mr = self._rng.randrange(1, 200)
        self._pending_sms: list[tuple[str, int]] = []  # (store, index) not yet announced
        self._reset_volatile()

    # -- host side --

    def receive(self, data: bytes, now: float) -> None:
        """Bytes the host wrote to the module's UART."""
        self._advance(now)
        if self._hung or not self._ready or not data:
            return  # booting or hung: nothing is read
        self._inbuf += data
        del self._inbuf[:-RX_BUFFER]  # a flooded UART receive buffer overflows
        self._take_input(now)

    def output(self, now: float) -> bytes:
        """Everything the module has sent by `now` (possibly garbled)."""
        self._advance(now)
        if self._hung:
            self._out.clear()
            return b""
        if self.bridge is not None:
            for event in self.bridge.events():
                self.broker_event(event, now)
        self._take_input(now)
        data = bytes(self._out)
        self._out.clear()
        if self.garble_probability > 0 and data:
            data = bytes(
                b ^ self._garble_rng.randrange(1, 256)
                if self._garble_rng.random() < self.garble_probability
                else b
                for b in data
            )
        return data

    # -- environment and faults --

    def set_coverage(self, on: bool) -> None:
        """Network coverage: off loses registration and data; on re-registers after register_s."""
        if on == self._coverage:
            return
        self._coverage = on
        now = self._now
        if on:
            self._start_registration(now)
            return
        self._reg_token += 1  # a registration in progress never completes
        if self._registered:
            self._set_reg(2)
            self._lose_data()

    def set_signal(self, signal: Signal) -> None:
        self.signal = signal

    def drop_mqtt(self) -> None:
        """The broker side closes every MQTT connection: `+CMQTTCONNLOST: <i>,1`."""
        for index, client in self._clients.items():
            if client.connected:
                self._abort_connection(index)
                self._urc(f"+CMQTTCONNLOST: {index},1")

    def hang(self) -> None:
        """The firmware locks up: no output, input ignored (even AT+CRESET) until power_key()."""
        self._hung = True
        self._drop_all_connections()

    def power_key(self, now: float) -> None:
        """A PWRKEY pulse: the module restarts from power-on (hung or not)."""
        self._advance(now)
        self._drop_all_connections()
        self._hung = False
        self._power_on(now)

    def deliver_sms(self, sender: str, text: str, received: datetime | None = None) -> int:
        """The network delivers an SMS (any text: a longer one as a concatenated message, one
        part per slot) into the receiving store (AT+CPMS <mem3>); returns its (first) index.
        `sender` is a number ("+44...") or an alphanumeric name.

        The new-message indications (+CMTI / +CMT per AT+CNMI) come now when the module is
        registered, else when it next registers. Raises SmsStoreFull when the store has no
        room for every part (the network keeps the message then).
        """
        when = received or datetime.now(timezone.utc)
        self._concat_ref = (self._concat_ref + 1) % 256
        parts = split(text, self._concat_ref)
        mem = self._cpms[2]
        store = self._stores[mem]
        if store.free() < len(parts):
            raise SmsStoreFull(f'store "{mem}" full: {len(store)}/{store.capacity} messages')
        indexes = [store.add(sender, part, when) for part in parts]
        self._pending_sms += [(mem, i) for i in indexes]
        if self._registered and self._sms_ready and not self._hung:
            self._flush_sms_indications()
        return indexes[0]

    @property
    def hung(self) -> bool:
        return self._hung

    @property
    def registered(self) -> bool:
        return self._registered

    @property
    def mqtt_connected(self) -> bool:
        return any(client.connected for client in self._clients.values())

    # -- time --

    def _delay(self, seconds: float) -> float:
        return seconds * self.time_scale * self.slow_factor

    def _query_delay(self) -> float:
        return self._delay(self._rng.uniform(0.02, 0.06))

    def _at(self, due: float, action: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (due, self._seq, self._epoch, action))

    def _advance(self, now: float) -> None:
        if not self._started:
            self._started = True
            self._power_on(now)
        while self._timers and self._timers[0][0] <= now and not self._hung:
            due, _, epoch, action = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            if epoch == self._epoch:
                action(due)
                self._take_input(due)
        self._now = max(self._now, now)

    # -- output --

    def _emit(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self._out += b"\r\n" + data + b"\r\n"

    def _urc(self, text: str | bytes) -> None:
        if self._data_wait is not None:
            self._deferred.append(text)  # not in the middle of data the host is sending
        else:
            self._emit(text)

    def _respond(self, now: float, lines: tuple[str, ...] | list[str], final: str) -> None:
        def send(_: float) -> None:
            if lines:  # information lines form one block (§1.4)
                self._emit("\r\n".join(lines))
            self._final(final)

        self._at(now + self._query_delay(), send)

    # -- boot, SIM, registration --

    def _reset_volatile(self) -> None:
        """What a reboot forgets."""
        self._ready = False
        self._csdh = 0
        self._busy = False
        self._echo = True
        self._cmee = 1
        self._inbuf = bytearray()
        self._data_wait: DataWait | None = None
        self._deferred: list[str | bytes] = []
        self._sim_state = "initialising"
        self._sms_ready = False
        self._cfun = 1
        self._reg_stat = 0
        self._reg_n = {"+CREG": 0, "+CGREG": 0, "+CEREG": 0}
        self._reg_token = 0
        self._net_open = False
        self._ip = ""
        self._mqtt_started = False
        self._clients: dict[int, MqttClient] = {}
        self._cops_format = 0

    def _power_on(self, now: float) -> None:
        self._epoch += 1
        self._timers.clear()
        self._out.clear()
        self._reset_volatile()
        self._at(now + self._delay(self.boot_s), self._boot_done)

    def _boot_done(self, now: float) -> None:
        self._ready = True
        self._emit("*ATREADY: 1")
        self._at(now + self._delay(self._rng.uniform(0.2, 0.8)), self._sim_answers)

    def _sim_answers(self, now: float) -> None:
        if self._sim_kind == "absent":
            self._sim_state = "absent"
            self._urc("+CPIN: SIM REMOVED")
        elif self._sim_kind == "failure" or self._puk_tries == 0:
            self._sim_state = "failure"
        elif self._sim_locked is not None:
            self._sim_state = self._sim_locked
            self._urc(f"+CPIN: {self._sim_locked}")
        else:
            self._sim_ready(now)

    def _sim_ready(self, now: float) -> None:
        self._sim_state = "READY"
        self._urc("+CPIN: READY")
        self._at(now + self._delay(self._rng.uniform(0.3, 2.5)), self._sms_done)
        self._at(now + self._delay(self._rng.uniform(0.3, 2.5)), lambda _: self._urc("PB DONE"))
        self._start_registration(now)

    def _sms_done(self, _: float) -> None:
        self._sms_ready = True
        self._urc("SMS DONE")
        if self._registered:
            self._flush_sms_indications()

    @property
    def _registered(self) -> bool:
        return self._reg_stat in (1, 5)

    @property
    def _apn_accepted(self) -> bool:
        apn = self._cgdcont.get(1, ("IP", ""))[1]
        return self.apns is None or apn == "" or apn in self.apns

    def _set_reg(self, stat: int) -> None:
        if stat == self._reg_stat:
            return
        self._reg_stat = stat
        for name, n in self._reg_n.items():
            if n == 1:
                self._urc(f"{name}: {stat}")
            elif n == 2:
                self._urc(f"{name}: {self._reg_detail(name, stat)}")

    def _reg_detail(self, name: str, stat: int) -> str:
        if stat not in (1, 5):
            return str(stat)
        act = ",7" if name != "+CREG" else ""
        return f'{stat},"{TAC}","{CELL_ID}"{act}'

    def _start_registration(self, now: float) -> None:
        if self._sim_state != "READY" or self._cfun != 1 or self._hung:
            return
        self._set_reg(2)
        self._reg_token += 1
        token = self._reg_token
        if self._coverage:
            self._at(now + self._delay(self.register_s), lambda t: self._register(t, token))

    def _register(self, now: float, token: int) -> None:
        if token != self._reg_token or not self._coverage or self._cfun != 1:
            return
        self._set_reg(1)
        if self._apn_accepted:
            self._urc("+CGEV: EPS PDN ACT 1")
        if self._sms_ready:
            self._flush_sms_indications()

    def _lose_data(self) -> None:
        """The data context is gone: every connection and the MQTT service with it."""
        self._urc("+CGEV: NW PDN DEACT 1")
        for index, client in self._clients.items():
            if client.connected:
                self._abort_connection(index)
                self._urc(f"+CMQTTCONNLOST: {index},3")
            elif client.pending == "CONNECT":
                self._abort_connection(index)
                self._urc(f"+CMQTTCONNECT: {index},3")
        if self._net_open:
            self._net_open = False
            self._urc("+CIPEVENT: NETWORK CLOSED UNEXPECTEDLY")
        if self._mqtt_started:
            self._mqtt_started = False
            self._clients.clear()
            self._urc("+CMQTTNONET")

    def _abort_connection(self, index: int) -> None:
        client = self._clients.get(index)
        if client is not None:
            client.connected = False
            client.pending = None
        if self.bridge is not None:
            self.bridge.disconnect(index, graceful=False)

    def _drop_all_connections(self) -> None:
        for index, client in self._clients.items():
            if client.connected or client.pending is not None:
                self._abort_connection(index)

    def _flush_sms_indications(self) -> None:
        mt = self._cnmi[1]
        for mem, index in self._pending_sms:
            store = self._stores[mem]
            sms = store.peek(index)
            if sms is None or mt == 0:
                continue
            if mt == 2:  # routed to the host, not kept (§9.2.9)
                store.delete(index)
                self._urc(self._routed(sms.sender, sms.received, sms))
            else:
                self._urc(f'+CMTI: "{mem}",{index}')
        self._pending_sms.clear()

    # -- input --

    def _take_input(self, now: float) -> None:
        while not self._hung and self._ready:
            if self._data_wait is not None:
                if not self._take_data(now):
                    return
            elif self._busy:
                return
            else:
                line = self._take_line()
                if line is None:
                    return
                if line[:2].upper() == "AT":  # anything else is ignored, as the module does
                    self._execute(line, now)

    def _take_line(self) -> str | None:
        buf = self._inbuf
        ends = [i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0]
        if not ends:
            if len(buf) > 4 * 3071:
                del buf[:]  # runaway garbage without a line end
            return None
        end = min(ends)
        raw = bytes(buf[: end + 1])
        del buf[: end + 1]
        if self._echo:
            self._out += raw
        chars: list[str] = []
        for b in raw[:-1]:
            if b == BACKSPACE:
                if chars:
                    chars.pop()
            else:
                chars.append(chr(b))
        return "".join(chars).strip()

    def _take_data(self, now: float) -> bool:
        wait = self._data_wait
        assert wait is not None
        if wait.length is not None:
            need = wait.length - len(wait.buffer)
            wait.buffer += self._inbuf[:need]
            del self._inbuf[:need]
            if len(wait.buffer) < wait.length:
                return False
        else:
            found = (self._inbuf.find(bytes([CTRL_Z])), self._inbuf.find(bytes([ESC])))
            stops = [i for i in found if i >= 0]
            if not stops:
                if wait.echo:
                    self._out += self._inbuf
                wait.buffer += self._inbuf
                self._inbuf.clear()
                return False
            stop = min(stops)
            if wait.echo:
                self._out += self._inbuf[:stop]
            wait.buffer += self._inbuf[: stop + 1]  # keeps the terminator for the handler
            del self._inbuf[: stop + 1]
        self._data_wait = None
        deferred, self._deferred = self._deferred, []
        for text in deferred:
            self._emit(text)
        wait.on_data(bytes(wait.buffer), now)
        return True

    def _prompt(self, now: float, prompt: str, wait: DataWait) -> None:
        self._data_wait = wait
        self._at(now + self._query_delay(), lambda _: self._out.extend(prompt.encode()))

    # -- commands --

    def _execute(self, line: str, now: float) -> None:
        self._busy = True
        try:
            command = parse_line(line)
            handler = self._HANDLERS.get(command.name)
            if handler is None:
                raise AtSyntaxError(f"unknown command {command.name}")
            reply = handler(self, command, now)
        except AtSyntaxError:
            self._respond(now, (), "ERROR")
        except ModemError as error:
            self._respond(now, error.lines, error.final)
        else:
            if reply is not None:
                self._respond(now, reply, "OK")

    def _cme(self, code: int) -> ModemError:
        if self._cmee == 0:
            return ModemError("ERROR")
        return ModemError(f"+CME ERROR: {code if self._cmee == 1 else CME_TEXT[code]}")

    def _cms(self, code: int) -> ModemError:
        if self._cmee == 0:
            return ModemError("ERROR")
        return ModemError(f"+CMS ERROR: {code if self._cmee == 1 else CMS_TEXT[code]}")

    # Each handler returns the information lines of an OK answer, or None when it has
    # scheduled its answer itself (prompts, result URCs); failures raise.

    def _cmd_at(self, c: AtCommand, now: float) -> list[str]:
        return []

    def _cmd_echo(self, c: AtCommand, now: float) -> list[str]:
        if c.basic_value not in ("", "0", "1"):
            raise AtSyntaxError("ATE takes 0 or 1")
        self._echo = c.basic_value == "1"
        return []

    def _cmd_ati(self, c: AtCommand, now: float) -> list[str]:
        return [
            "Manufacturer: SIMCOM INCORPORATED",
            "Model: A7670G-LLSE",
            "Revision: A124B01A7670M7",
            f"IMEI: {self.imei}",
            "+GCAP: +CGSM,+FCLASS,+DS",
        ]

    def _cmd_simcomati(self, c: AtCommand, now: float) -> list[str]:
        return [
            "Manufacturer: SIMCOM INCORPORATED",
            "Model: A7670G-LLSE",
            "Revision: A124B01A7670M7",
            "A7670M7_B01V01_240722",
            f"IMEI: {self.imei}",
        ]

    def _cmd_imei(self, c: AtCommand, now: float) -> list[str]:
        return [self.imei]

    def _cmd_cimi(self, c: AtCommand, now: float) -> list[str]:
        self._require_sim()
        return [IMSI]

    def _cmd_ok(self, c: AtCommand, now: float) -> list[str]:
        """Accepted and without effect here (ATZ, AT&W, AT+CSCS=..., AT+CSSLCFG=...)."""
        return []

    def _cmd_cmee(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "read":
            return [f"+CMEE: {self._cmee}"]
        if c.form == "test":
            return ["+CMEE: (0-2)"]
        self._cmee = c.int_arg(0, 0, 2, default=0)
        return []

    def _require_sim(self) -> None:
        state = self._sim_state
        if state == "READY":
            return
        raise self._cme({"absent": 10, "SIM PIN": 11, "SIM PUK": 12}.get(state, 13))

    def _cmd_cpin(self, c: AtCommand, now: float) -> list[str] | None:
        state = self._sim_state
        if c.form == "test":
            return []
        if state == "absent":
            raise self._cme(10)
        if state not in ("READY", "SIM PIN", "SIM PUK"):
            raise self._cme(14 if state == "unlocking" else 13)
        if c.form == "read":
            return [f"+CPIN: {state}"]
        if c.form != "write":
            raise AtSyntaxError("AT+CPIN needs ? or =")
        code = c.str_arg(0)
        if state == "READY":
            raise self._cme(3)
        if state == "SIM PIN":
            if code != self._pin:
                self._pin_tries -= 1
                if self._pin_tries == 0:
                    self._sim_state = self._sim_locked = "SIM PUK"
                raise self._cme(16)
        else:  # SIM PUK: AT+CPIN=<puk>,<newpin>
            new_pin = c.str_arg(1, default="")
            if code != self._puk or not new_pin:
                self._puk_tries -= 1
                if self._puk_tries == 0:
                    self._sim_state = "failure"
                raise self._cme(16)
            self._pin = new_pin
        self._pin_tries = PIN_TRIES
        self._sim_locked = None
        self._sim_state = "unlocking"
        self._respond(now, (), "OK")
        self._at(now + self._delay(self._rng.uniform(0.3, 1.0)), self._sim_ready)
        return None

    def _cmd_cfun(self, c: AtCommand, now: float) -> list[str] | None:
        if c.form == "read":
            return [f"+CFUN: {self._cfun}"]
        if c.form == "test":
            return ["+CFUN: (0,1,4),(0-1)"]
        fun = c.int_arg(0, 0, 7)
        if fun not in (0, 1, 4):
            raise self._cme(4)
        if c.int_arg(1, 0, 1, default=0) == 1:
            return self._cmd_creset(c, now)
        if fun == self._cfun or (fun == 4 and self._cfun == 0):
            return []
        self._cfun = 1 if fun == 1 else 0
        if self._cfun == 0:
            self._reg_token += 1
            self._set_reg(0)
            self._lose_data()
        else:
            self._start_registration(now)
        return []

    def _cmd_creset(self, c: AtCommand, now: float) -> None:
        self._respond(now, (), "OK")

        def reboot(t: float) -> None:
            self._drop_all_connections()
            self._power_on(t)

        self._at(now + self._delay(0.3), reboot)
        return None

    # registration and signal

    def _cmd_reg(self, c: AtCommand, now: float) -> list[str]:
        name = c.name
        if c.form == "read":
            n, stat = self._reg_n[name], self._reg_stat
            return [f"{name}: {n},{self._reg_detail(name, stat) if n == 2 else stat}"]
        if c.form == "test":
            return [f"{name}: (0-2)"]
        self._reg_n[name] = c.int_arg(0, 0, 2, default=0)
        return []

    def _cmd_csq(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "test":
            return ["+CSQ: (0-31,99),(0-7,99)"]
        rssi = self.signal.csq if self._registered else 99
        return [f"+CSQ: {rssi},99"]

    def _cmd_cpsi(self, c: AtCommand, now: float) -> list[str]:
        if self._cfun == 0:
            return ["+CPSI: NO SERVICE,Low Power Mode"]
        if not self._registered:
            return ["+CPSI: NO SERVICE,Online"]
        return [f"+CPSI: {self.signal.cpsi()}"]

    def _cmd_cops(self, c: AtCommand, now: float) -> list[str] | None:
        if c.form == "read":
            if not self._registered:
                return ["+COPS: 0"]
            oper = (OPERATOR_LONG, OPERATOR_SHORT, OPERATOR_NUMERIC)[self._cops_format]
            return [f'+COPS: 0,{self._cops_format},"{oper}",7']
        if c.form == "test":
            if self._cfun == 0 or not self._coverage:
                raise self._cme(30)
            line = (
                f'+COPS: (2,"{OPERATOR_LONG}","{OPERATOR_SHORT}","{OPERATOR_NUMERIC}",7),'
                ",(0,1,2,3,4),(0,1,2)"
            )

            self._respond(now + self._delay(self._rng.uniform(3.0, 8.0)), [line], "OK")
            return None
        mode = c.int_arg(0, 0, 4, default=0)
        if mode == 3:
            self._cops_format = c.int_arg(1, 0, 2, default=0)
        return []

    # packet data

    def _cmd_cgdcont(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "read":
            return [
                f'+CGDCONT: {cid},"{kind}","{apn}","0.0.0.0",0,0,0,0,0,0'
                for cid, (kind, apn) in sorted(self._cgdcont.items())
            ]
        if c.form == "test":
            return ['+CGDCONT: (1-15),"IP",,,(0-2),(0-4),(0-1),(0-1)']
        cid = c.int_arg(0, 1, 15)
        if c.arg(1) is None:
            self._cgdcont.pop(cid, None)
            return []
        kind = c.str_arg(1).upper()
        if kind not in ("IP", "IPV6", "IPV4V6"):
            raise AtSyntaxError(f"PDP type {kind}")
        context = (kind, c.str_arg(2, default=""))
        active = cid == 1 and self._registered and self._apn_accepted
        if self.refuse_cgdcont_while_active and active and self._cgdcont.get(1) != context:
            raise ModemError("ERROR")
        self._cgdcont[cid] = context
        return []

    def _cmd_cgact(self, c: AtCommand, now: float) -> list[str]:
        active = int(self._registered and self._apn_accepted)
        if c.form == "read":
            return [f"+CGACT: {cid},{active}" for cid in sorted(self._cgdcont)]
        if c.form == "test":
            return ["+CGACT: (0,1)"]
        state = c.int_arg(0, 0, 1)
        cid = c.int_arg(1, 1, 15, default=1)
        if state == 1:
            if cid not in self._cgdcont:
                raise self._cme(50)
            if not self._registered:
                raise self._cme(30)
            if not self._apn_accepted:
                raise self._cme(133)
        return []

    def _cmd_cgatt(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "read":
            return [f"+CGATT: {int(self._registered)}"]
        if c.form == "test":
            return ["+CGATT: (0,1)"]
        c.int_arg(0, 0, 1)
        return []

    def _data_possible(self) -> bool:
        return self._registered and self._apn_accepted

    def _cmd_netopen(self, c: AtCommand, now: float) -> list[str] | None:
        if c.form == "read":
            return [f"+NETOPEN: {int(self._net_open)}"]
        if c.form != "exec":
            raise AtSyntaxError("AT+NETOPEN takes no argument")
        if self._net_open:
            raise ModemError("ERROR", ("+IPERROR: Network is already opened",))
        self._respond(now, (), "OK")

        def result(_: float) -> None:
            if self._data_possible():
                self._net_open = True
                self._ip = f"10.{self._rng.randrange(256)}.{self._rng.randrange(256)}.17"
                self._urc("+NETOPEN: 0")
            else:
                self._urc("+NETOPEN: 1")

        self._at(now + self._delay(self._rng.uniform(1.0, 3.0)), result)
        return None

    def _cmd_netclose(self, c: AtCommand, now: float) -> None:
        if not self._net_open:
            raise ModemError("ERROR", ("+NETCLOSE: 2",))
        self._net_open = False
        self._respond(now, (), "OK")
        self._at(now + self._delay(0.5), lambda _: self._urc("+NETCLOSE: 0"))
        return None

    def _cmd_ipaddr(self, c: AtCommand, now: float) -> list[str]:
        if not self._net_open:
            raise ModemError("ERROR", ("+IPERROR: Network not opened",))
        return [f"+IPADDR: {self._ip}"]

    def _final(self, final: str) -> None:
        self._emit(final)
        self._busy = False

    _HANDLERS: ClassVar[dict[str, Callable[[A7670, AtCommand, float], list[str] | None]]] = {
        "": _cmd_at,
        "E": _cmd_echo,
        "I": _cmd_ati,
        "Z": _cmd_ok,
        "&W": _cmd_ok,
        "+SIMCOMATI": _cmd_simcomati,
        "+CGSN": _cmd_imei,
        "+GSN": _cmd_imei,
        "+CIMI": _cmd_cimi,
        "+CSCS": _cmd_ok,
        "+CSSLCFG": _cmd_ok,
        "+CMEE": _cmd_cmee,
        "+CPIN": _cmd_cpin,
        "+CFUN": _cmd_cfun,
        "+CRESET": _cmd_creset,
        "+CREG": _cmd_reg,
        "+CGREG": _cmd_reg,
        "+CEREG": _cmd_reg,
        "+CSQ": _cmd_csq,
        "+CPSI": _cmd_cpsi,
        "+COPS": _cmd_cops,
        "+CGDCONT": _cmd_cgdcont,
        "+CGACT": _cmd_cgact,
        "+CGATT": _cmd_cgatt,
        "+NETOPEN": _cmd_netopen,
        "+NETCLOSE": _cmd_netclose,
        "+IPADDR": _cmd_ipaddr,
        "+CMQTTSTART": MqttCommands._cmd_cmqttstart,
        "+CMQTTSTOP": MqttCommands._cmd_cmqttstop,
        "+CMQTTACCQ": MqttCommands._cmd_cmqttaccq,
        "+CMQTTREL": MqttCommands._cmd_cmqttrel,
        "+CMQTTCFG": MqttCommands._cmd_cmqttcfg,
        "+CMQTTSSLCFG": MqttCommands._cmd_cmqttsslcfg,
        "+CMQTTWILLTOPIC": MqttCommands._cmd_cmqttwilltopic,
        "+CMQTTWILLMSG": MqttCommands._cmd_cmqttwillmsg,
        "+CMQTTCONNECT": MqttCommands._cmd_cmqttconnect,
        "+CMQTTDISC": MqttCommands._cmd_cmqttdisc,
        "+CMQTTTOPIC": MqttCommands._cmd_cmqtttopic,
        "+CMQTTPAYLOAD": MqttCommands._cmd_cmqttpayload,
        "+CMQTTPUB": MqttCommands._cmd_cmqttpub,
        "+CMQTTSUBTOPIC": MqttCommands._cmd_cmqttsubtopic,
        "+CMQTTSUB": MqttCommands._cmd_cmqttsub,
        "+CMQTTUNSUBTOPIC": MqttCommands._cmd_cmqttunsubtopic,
        "+CMQTTUNSUB": MqttCommands._cmd_cmqttunsub,
        "+CMGF": SmsCommands._cmd_cmgf,
        "+CSDH": SmsCommands._cmd_csdh,
        "+CPMS": SmsCommands._cmd_cpms,
        "+CNMI": SmsCommands._cmd_cnmi,
        "+CMGS": SmsCommands._cmd_cmgs,
        "+CMGR": SmsCommands._cmd_cmgr,
        "+CMGD": SmsCommands._cmd_cmgd,
        "+CMGL": SmsCommands._cmd_cmgl,
    }
