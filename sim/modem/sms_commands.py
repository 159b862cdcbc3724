"""The A7670's SMS AT commands in text mode (A76XX AT Command Manual V1.09 ch. 9); mixed
into `sim.modem.a7670.A7670`, whose state they use.

PDU mode is not emulated: in it CMGS answers `+CMS ERROR: 304` and CMGR/CMGL 303.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sim.modem.at_command import AtCommand, AtSyntaxError, DataWait, ModemError
from sim.modem.sms_store import LIST_FILTERS, SmsStore

ESC = 0x1B
#: Characters in one SMS with the GSM 7-bit alphabet (§9.2.13).
SMS_TEXT_MAX = 160


class SmsCommands:
    """AT+CMGF/CNMI/CMGS/CMGR/CMGD/CMGL handlers; the state lives in the A7670."""

    sms: SmsStore
    sent_sms: list[tuple[str, str]]
    _sim_state: str
    _sms_ready: bool
    _cmgf: int
    _cnmi: tuple[int, int, int, int, int]
    _mr: int
    _echo: bool
    _rng: random.Random
    _registered: bool
    _cms: Callable[[int], ModemError]
    _respond: Callable[[float, tuple[str, ...] | list[str], str], None]
    _at: Callable[[float, Callable[[float], None]], None]
    _delay: Callable[[float], float]
    _final: Callable[[str], None]
    _prompt: Callable[[float, str, DataWait], None]

    def _sms_guard(self) -> None:
        state = self._sim_state
        if state != "READY":
            raise self._cms({"absent": 310, "SIM PIN": 311, "SIM PUK": 316}.get(state, 313))
        if not self._sms_ready:
            raise self._cms(314)

    def _cmd_cmgf(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "read":
            return [f"+CMGF: {self._cmgf}"]
        if c.form == "test":
            return ["+CMGF: (0-1)"]
        self._cmgf = c.int_arg(0, 0, 1, default=0)
        return []

    def _cmd_cnmi(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "read":
            return ["+CNMI: " + ",".join(map(str, self._cnmi))]
        if c.form == "test":
            return ["+CNMI: (0,1,2),(0,1,2,3),(0,2),(0,1,2),(0,1)"]
        mode = c.int_arg(0, 0, 2)
        mt = c.int_arg(1, 0, 3, default=0)
        bm = c.int_arg(2, 0, 2, default=0)
        ds = c.int_arg(3, 0, 2, default=0)
        bfr = c.int_arg(4, 0, 1, default=0)
        if bm == 1 or ((mt == 3 or ds == 1) and mode != 1) or (mt == 2 and mode == 0):
            raise AtSyntaxError("CNMI combination refused (§9.2.9)")
        self._cnmi = (mode, mt, bm, ds, bfr)
        return []

    def _cmd_cmgs(self, c: AtCommand, now: float) -> None:
        self._sms_guard()
        if self._cmgf == 0:
            raise self._cms(304)  # PDU mode is not emulated
        arg = c.arg(0)
        if arg is None or not arg.quoted or not arg.text:
            raise self._cms(305)
        dest = arg.text

        def on_data(data: bytes, t: float) -> None:
            if data.endswith(bytes([ESC])):
                self._respond(t, (), "OK")  # cancelled
                return
            text = data[:-1].decode("utf-8", "replace")
            if len(text) > SMS_TEXT_MAX:
                self._respond(t, (), self._cms(305).final)
                return
            if not self._registered:
                self._at(t + self._delay(2.0), lambda _: self._final(self._cms(331).final))
                return
            self._mr = self._mr % 255 + 1
            self.sent_sms.append((dest, text))
            mr = self._mr

            self._respond(t + self._delay(self._rng.uniform(1.5, 3.0)), [f"+CMGS: {mr}"], "OK")

        self._prompt(now, "\r\n> ", DataWait(on_data, None, echo=self._echo))

    def _cmd_cmgr(self, c: AtCommand, now: float) -> list[str]:
        self._sms_guard()
        if self._cmgf == 0:
            raise self._cms(303)  # PDU mode is not emulated
        index = c.int_arg(0, 0, 255)
        sms = self.sms.read(index)
        if sms is None:
            raise self._cms(321)
        return [f'+CMGR: "{sms.stat}","{sms.sender}",,"{sms.scts}"', sms.text]

    def _cmd_cmgd(self, c: AtCommand, now: float) -> list[str]:
        self._sms_guard()
        index = c.int_arg(0, 0, 255)
        flag = c.int_arg(1, 0, 4, default=0)
        if flag == 4:
            self.sms.delete_all()
        elif flag > 0:
            for i, sms in self.sms.listing("ALL"):
                if sms.stat == "REC READ":
                    self.sms.delete(i)
        elif not 1 <= index <= self.sms.capacity:
            raise self._cms(321)
        else:
            self.sms.delete(index)
        return []

    def _cmd_cmgl(self, c: AtCommand, now: float) -> list[str]:
        self._sms_guard()
        if self._cmgf == 0:
            raise self._cms(303)
        if c.form == "test":
            return ['+CMGL: ("REC UNREAD","REC READ","STO UNSENT","STO SENT","ALL")']
        stat = c.str_arg(0, default="REC UNREAD")
        if stat not in LIST_FILTERS:
            raise AtSyntaxError(f"CMGL stat {stat!r}")
        lines = []
        for index, sms in self.sms.listing(stat):
            lines.append(f'+CMGL: {index},"{sms.stat}","{sms.sender}",,"{sms.scts}"')
            lines.append(sms.text)
        return lines
