"""The A7670's short-message stores: "SM" (the SIM) and "ME" (the module's flash).

Indices start at 1 and a freed index is reused, lowest first, as on a SIM card. Reading an
unread message marks it read (A76XX AT Command Manual V1.09 §9.2.12, SMS Application Note
V3.00 p.14). Capacities follow the manual's AT+CPMS examples (§9.2.2): `"ME",0,180` and
`+CPMS: 3,50,...` for a SIM. Both survive module resets (the SIM is a card, ME is flash).
A message longer than one SMS is stored as its parts, one index each, as a module stores
the parts of a concatenated message it receives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sim.modem.sms_pdu import Part

#: Message slots on a typical SIM ("SM") and in the module's flash ("ME").
SIM_CAPACITY = 50
ME_CAPACITY = 180

STAT_UNREAD = "REC UNREAD"
STAT_READ = "REC READ"
#: Text-mode <stat> names and their PDU-mode numbers (§9.2.11).
STAT_NUMBERS = {STAT_UNREAD: 0, STAT_READ: 1, "STO UNSENT": 2, "STO SENT": 3}
#: AT+CMGL=<stat> filters; "ALL" (PDU mode 4) lists every message (§9.2.11).
LIST_FILTERS = frozenset({*STAT_NUMBERS, "ALL"})


class SmsStoreFull(Exception):
    """The store has no free slot; the network keeps the message, the emulator refuses it."""


@dataclass(frozen=True)
class StoredSms:
    sender: str
    part: Part
    received: datetime
    stat: str = STAT_UNREAD

    @property
    def text(self) -> str:
        return self.part.text


class SmsStore:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._slots: dict[int, StoredSms] = {}

    def free(self) -> int:
        return self.capacity - len(self._slots)

    def add(self, sender: str, part: Part, received: datetime) -> int:
        for index in range(1, self.capacity + 1):
            if index not in self._slots:
                self._slots[index] = StoredSms(sender, part, received)
                return index
        raise SmsStoreFull(f"message store full ({self.capacity} messages)")

    def peek(self, index: int) -> StoredSms | None:
        """The message at `index`, left as it is."""
        return self._slots.get(index)

    def read(self, index: int) -> StoredSms | None:
        """The message at `index` as it was before reading (then marked REC READ)."""
        sms = self._slots.get(index)
        if sms is not None:
            self._slots[index] = replace(sms, stat=STAT_READ)
        return sms

    def delete(self, index: int) -> bool:
        return self._slots.pop(index, None) is not None

    def delete_all(self) -> None:
        self._slots.clear()

    def listing(self, stat: str) -> list[tuple[int, StoredSms]]:
        """Messages matching `stat` (a LIST_FILTERS value), each marked read afterwards."""
        out = []
        for index in sorted(self._slots):
            sms = self._slots[index]
            if stat in ("ALL", sms.stat):
                out.append((index, sms))
                self._slots[index] = replace(sms, stat=STAT_READ)
        return out

    def __len__(self) -> int:
        return len(self._slots)
