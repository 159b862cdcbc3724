"""The A7670's SMS AT commands (A76XX AT Command Manual V1.09 ch. 9, SMS Application Note
V3.00); mixed into `sim.modem.a7670.A7670`, whose state they use.

Both formats of AT+CMGF, as the module prints them:

- PDU mode (0, the default): `+CMGR: <stat>,"",<length>` then the SMS-DELIVER PDU in hex
  (the real A7670 of [ISS#7] prints `+CMGRD: 0,"",30`), `+CMGL: <index>,<stat>,"",<length>`,
  `+CMT: "",<length>`; AT+CMGS=<length> takes an SMS-SUBMIT PDU after the prompt.
- text mode (1): `+CMGR: <stat>,<oa>,,<scts>` and, with AT+CSDH=1, `,<tooa>,<fo>,<pid>,<dcs>,
  <sca>,<tosca>,<length>`; then the body exactly as it is, CR and LF included (a body is
  not escaped in text mode: that is what makes text mode unsafe to parse). GSM 7-bit bodies
  are printed one byte a character (the IRA character set: "?" for what IRA lacks), 8-bit,
  UCS2 and user-data-header bodies as hex (§9.2.12 `<data>`), `<length>` counting
  characters or octets.

AT+CPMS selects the stores for reading/deleting (mem1), writing (mem2) and receiving (mem3),
"SM" by default (§9.2.2 execution form); new messages go to mem3 and are announced with
`+CMTI: "<mem3>",<index>` (CNMI mt=1) or routed as `+CMT` (mt=2, not stored). CMGF, CPMS
and CNMI are AUTO_SAVE, CSDH is not (§9.2.7).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime

from sim.modem.at_command import AtCommand, AtSyntaxError, DataWait, ModemError
from sim.modem.sms_pdu import SMSC, PduError, deliver, read_submit, scts, user_data
from sim.modem.sms_store import LIST_FILTERS, STAT_NUMBERS, SmsStore, StoredSms

ESC = 0x1B
#: Characters in one SMS with the GSM 7-bit alphabet (§9.2.13).
SMS_TEXT_MAX = 160
#: The PDU-mode `<stat>` numbers of AT+CMGL, 4 being "all" (§9.2.11).
_PDU_LIST = {0: "REC UNREAD", 1: "REC READ", 2: "STO UNSENT", 3: "STO SENT", 4: "ALL"}
STORAGES = ("SM", "ME")


class SmsCommands:
    """AT+CMGF/CSDH/CPMS/CNMI/CMGS/CMGR/CMGD/CMGL handlers; the state lives in the A7670."""

    sent_sms: list[tuple[str, str]]
    _stores: dict[str, SmsStore]
    _cpms: tuple[str, str, str]
    _csdh: int
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

    @property
    def sms(self) -> SmsStore:
        """The store messages are read from and deleted in (AT+CPMS <mem1>)."""
        return self._stores[self._cpms[0]]

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

    def _cmd_csdh(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "read":
            return [f"+CSDH: {self._csdh}"]
        if c.form == "test":
            return ["+CSDH: (0-1)"]
        self._csdh = c.int_arg(0, 0, 1, default=0)
        return []

    def _cmd_cpms(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "test":
            return ['+CPMS: ("ME","SM"),("ME","SM"),("ME","SM")']
        if c.form == "read":
            return ["+CPMS: " + ",".join(self._usage(mem, named=True) for mem in self._cpms)]
        self._sms_guard()
        if c.form == "exec":
            self._cpms = ("SM", "SM", "SM")
        else:
            mems = [c.str_arg(0)]
            for i in (1, 2):
                arg = c.arg(i)
                mems.append(mems[-1] if arg is None else arg.text)
            if any(m not in STORAGES for m in mems) or not all(
                a is None or a.quoted for a in c.args
            ):
                raise self._cms(302)
            self._cpms = (mems[0], mems[1], mems[2])
        return ["+CPMS: " + ",".join(self._usage(mem, named=False) for mem in self._cpms)]

    def _usage(self, mem: str, *, named: bool) -> str:
        store = self._stores[mem]
        text = f"{len(store)},{store.capacity}"
        return f'"{mem}",{text}' if named else text

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
            try:
                length = c.int_arg(0, 1, 255)
            except AtSyntaxError:  # the manual's own example: AT+CMGS=02112345678 (§28.4)
                raise self._cms(304) from None

            def on_pdu(data: bytes, t: float) -> None:
                if data.endswith(bytes([ESC])):
                    self._respond(t, (), "OK")  # cancelled
                    return
                try:
                    dest, text = read_submit(data[:-1].decode("ascii", "replace"), length)
                except PduError:
                    self._respond(t, (), self._cms(304).final)
                    return
                self._submit(t, dest, text)

            self._prompt(now, "\r\n> ", DataWait(on_pdu, None, echo=self._echo))
            return None
        arg = c.arg(0)
        if arg is None or not arg.quoted or not arg.text:
            raise self._cms(305)
        dest = arg.text

        def on_text(data: bytes, t: float) -> None:
            if data.endswith(bytes([ESC])):
                self._respond(t, (), "OK")  # cancelled
                return
            text = data[:-1].decode("utf-8", "replace")
            if len(text) > SMS_TEXT_MAX:
                self._respond(t, (), self._cms(305).final)
                return
            self._submit(t, dest, text)

        self._prompt(now, "\r\n> ", DataWait(on_text, None, echo=self._echo))
        return None

    def _submit(self, t: float, dest: str, text: str) -> None:
        if not self._registered:
            self._at(t + self._delay(2.0), lambda _: self._final(self._cms(331).final))
            return
        self._mr = self._mr % 255 + 1
        self.sent_sms.append((dest, text))
        mr = self._mr
        self._respond(t + self._delay(self._rng.uniform(1.5, 3.0)), [f"+CMGS: {mr}"], "OK")

    def _cmd_cmgr(self, c: AtCommand, now: float) -> list[str]:
        self._sms_guard()
        if c.form == "test":
            return []
        index = c.int_arg(0, 0, 255)
        sms = self.sms.read(index)
        if sms is None:
            raise self._cms(321)
        return self._show(sms, f"+CMGR: {self._stat(sms)}")

    def _cmd_cmgd(self, c: AtCommand, now: float) -> list[str]:
        self._sms_guard()
        if c.form == "test":
            return [f"+CMGD: ({','.join(str(i) for i in range(1, 6))}),(0-4)"]
        flag = c.int_arg(1, 0, 4, default=0)
        index = c.int_arg(0, 0, 255, default=0 if flag else None)
        store = self.sms
        if flag == 4:
            store.delete_all()
        elif flag > 0:
            for i, sms in store.listing("ALL"):
                if sms.stat == "REC READ":
                    store.delete(i)
        elif not 1 <= index <= store.capacity:
            raise self._cms(321)
        else:
            store.delete(index)
        return []

    def _cmd_cmgl(self, c: AtCommand, now: float) -> list[str]:
        self._sms_guard()
        if c.form == "test":
            if self._cmgf == 0:
                return ["+CMGL: (0-4)"]
            return ['+CMGL: ("REC UNREAD","REC READ","STO UNSENT","STO SENT","ALL")']
        if self._cmgf == 0:
            stat = _PDU_LIST.get(c.int_arg(0, 0, 4, default=0))
        else:
            stat = c.str_arg(0, default="REC UNREAD")
        if stat not in LIST_FILTERS:
            raise AtSyntaxError(f"CMGL stat {stat!r}")
        lines: list[str] = []
        for index, sms in self.sms.listing(stat):
            lines += self._show(sms, f"+CMGL: {index},{self._stat(sms)}")
        return lines

    def _stat(self, sms: StoredSms) -> str:
        return str(STAT_NUMBERS[sms.stat]) if self._cmgf == 0 else f'"{sms.stat}"'

    def _show(self, sms: StoredSms, head: str) -> list[str]:
        """A stored message as CMGR/CMGL print it: the header, then the PDU or the body."""
        if self._cmgf == 0:
            length, pdu = deliver(sms.sender, sms.part, sms.received)
            return [f'{head},"",{length}', pdu]
        header, body = self._text_form(sms)
        return [f"{head},{header}", body]

    def _text_form(self, sms: StoredSms) -> tuple[str, str]:
        """The text-mode fields after <stat> (SMS-DELIVER, §9.2.12 form 1) and the body."""
        part = sms.part
        header = f'"{sms.sender}",,"{scts(sms.received)}"'
        if part.dcs == 0x08 or part.udh:
            _, ud = user_data(part)
            body, length = ud.hex().upper(), len(ud)
        else:
            body = "".join(ch if " " <= ch <= "~" or ch in "\r\n" else "?" for ch in part.text)
            length = len(part.text)
        if self._csdh:
            digits = sms.sender.lstrip("+")
            tooa = 208 if not digits.isdigit() else 145 if sms.sender.startswith("+") else 129
            fo = 0x44 if part.udh else 0x04
            header += f',{tooa},{fo},0,{part.dcs},"{SMSC}",145,{length}'
        return header, body

    def _routed(self, sender: str, when: datetime, stored: StoredSms) -> str:
        """The `+CMT` URC of a message routed to the host (CNMI mt=2), body included."""
        if self._cmgf == 0:
            length, pdu = deliver(sender, stored.part, when)
            return f'+CMT: "",{length}\r\n{pdu}'
        header, body = self._text_form(stored)
        return f"+CMT: {header}\r\n{body}"
