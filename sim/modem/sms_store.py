"""The SIM's short-message store ("SM") as the A7670 presents it in text mode.

Indices start at 1 and a freed index is reused, lowest first, as on a SIM card. Reading an
unread message marks it read (A76XX AT Command Manual V1.09 §9.2.12, SMS Application Note
V3.00 p.14). The store belongs to the SIM, so it survives module resets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

#: Message slots on a typical SIM ("SM" storage).
SIM_CAPACITY = 50

STAT_UNREAD = "REC UNREAD"
STAT_READ = "REC READ"
#: AT+CMGL=<stat> filters; "ALL" lists every message (§9.2.11).
LIST_FILTERS = frozenset({STAT_UNREAD, STAT_READ, "STO UNSENT", "STO SENT", "ALL"})


class SmsStoreFull(Exception):
    """The SIM has no free slot; the network would keep the message, the emulator refuses."""


@dataclass
class StoredSms:
    sender: str
    text: str
    received: datetime
    stat: str = STAT_UNREAD

    @property
    def scts(self) -> str:
        """Service-centre time stamp, "yy/MM/dd,hh:mm:ss+zz" (zz in quarter hours)."""
        local = self.received.astimezone(timezone.utc)
        return local.strftime("%y/%m/%d,%H:%M:%S") + "+00"


class SmsStore:
    def __init__(self, capacity: int = SIM_CAPACITY) -> None:
        self.capacity = capacity
        self._slots: dict[int, StoredSms] = {}

    def add(self, sender: str, text: str, received: datetime) -> int:
        for index in range(1, self.capacity + 1):
            if index not in self._slots:
                self._slots[index] = StoredSms(sender, text, received)
                return index
        raise SmsStoreFull(f"SIM message store full ({self.capacity} messages)")

    def peek(self, index: int) -> StoredSms | None:
        """The message at `index`, left as it is."""
        return self._slots.get(index)

    def read(self, index: int) -> StoredSms | None:
        """The message at `index` as it was before reading (then marked REC READ)."""
        sms = self._slots.get(index)
        if sms is None:
            return None
        before = StoredSms(sms.sender, sms.text, sms.received, sms.stat)
        sms.stat = STAT_READ
        return before

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
                out.append((index, StoredSms(sms.sender, sms.text, sms.received, sms.stat)))
                sms.stat = STAT_READ
        return out

    def __len__(self) -> int:
        return len(self._slots)
