"""The network side of SMS PDUs for the A7670 emulator: SMS-DELIVER PDUs as the module
prints them (AT+CMGR/CMGL/+CMT in PDU mode), SMS-SUBMIT PDUs as the host writes them
(AT+CMGS in PDU mode); 3GPP TS 23.040 §9.2.2.1-2, TS 23.038 §6.2.1.

Written for the emulator alone (it never imports the companion's codec): its septets are
packed through a bit string, most significant bit of each septet first in reverse, the
way TS 23.038 §6.1.2.1.1 draws it, so that the two codecs cannot share one mistake. Both
are checked against PDUs made by an independent implementation and against a real module's
PDU (transcripts ISS#7) in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

#: TS 23.038 §6.2.1: the default alphabet (position = septet) and its extension table.
BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D,
             "]": 0x3E, "|": 0x40, "€": 0x65}  # fmt: skip
_FROM_EXTENSION = {v: k for k, v in EXTENSION.items()}

#: Per message: 160 septets, or 70 UCS2 characters; per part of a concatenated one, 153 or
#: 67 (the 6-octet user-data header takes the rest, TS 23.040 §9.2.3.24.1).
SEPTETS, SEPTETS_PART = 160, 153
UCS2_CHARS, UCS2_CHARS_PART = 70, 67

SMSC = "+447785016005"  # the emulated network's service centre


class PduError(ValueError):
    """A PDU the emulated module refuses: AT+CMGS answers +CMS ERROR: 304."""


@dataclass(frozen=True)
class Part:
    """One stored SMS: the user data (header included) and how it is coded."""

    dcs: int  # 0x00 GSM 7-bit, 0x08 UCS2
    udh: bytes  # the user-data header (with its length octet), or b""
    text: str  # this part's text


def gsm7(text: str) -> list[int] | None:
    """Septets of `text`, or None if the default alphabet cannot hold it."""
    out: list[int] = []
    for ch in text:
        if ch in EXTENSION:
            out += [0x1B, EXTENSION[ch]]
        elif ch != "\x1b" and ch in BASIC:
            out.append(BASIC.index(ch))
        else:
            return None
    return out


def split(text: str, reference: int) -> list[Part]:
    """`text` as the network delivers it: one part, or a concatenated message whose parts
    carry an 8-bit-reference concatenation element (IEI 0)."""
    septets = gsm7(text)
    if septets is not None and len(septets) <= SEPTETS:
        return [Part(0x00, b"", text)]
    if septets is None and len(text.encode("utf-16-be")) <= 2 * UCS2_CHARS:
        return [Part(0x08, b"", text)]
    chunks: list[str] = []
    if septets is not None:
        current = ""
        for ch in text:  # never split an escape sequence
            if len(gsm7(current + ch) or []) > SEPTETS_PART:
                chunks.append(current)
                current = ""
            current += ch
        chunks.append(current)
        dcs = 0x00
    else:
        units = text.encode("utf-16-be")
        step = 2 * UCS2_CHARS_PART
        pieces = [units[i : i + step] for i in range(0, len(units), step)]
        if any(0xD8 <= p[-2] <= 0xDB for p in pieces[:-1]):  # a surrogate pair cut in two
            pieces = _resplit_surrogates(units, step)
        chunks = [p.decode("utf-16-be") for p in pieces]
        dcs = 0x08
    total = len(chunks)
    return [
        Part(dcs, bytes([5, 0, 3, reference & 0xFF, total, n + 1]), chunk)
        for n, chunk in enumerate(chunks)
    ]


def _resplit_surrogates(units: bytes, step: int) -> list[bytes]:
    pieces, start = [], 0
    while start < len(units):
        end = min(start + step, len(units))
        if end < len(units) and 0xD8 <= units[end - 2] <= 0xDB:
            end -= 2
        pieces.append(units[start:end])
        start = end
    return pieces


def _bits_to_octets(septets: list[int], fill: int) -> bytes:
    """Pack by building the bit stream: septet k occupies bits 7k+fill .. 7k+fill+6, bit 0
    of the stream being bit 0 of octet 0."""
    bits = [0] * fill
    for s in septets:
        bits += [(s >> b) & 1 for b in range(7)]
    while len(bits) % 8:
        bits.append(0)
    return bytes(sum(bits[i + b] << b for b in range(8)) for i in range(0, len(bits), 8))


def _octets_to_septets(data: bytes, count: int, fill: int) -> list[int]:
    bits = [(o >> b) & 1 for o in data for b in range(8)][fill:]
    if len(bits) < 7 * count:
        raise PduError("user data shorter than TP-UDL")
    return [sum(bits[7 * k + b] << b for b in range(7)) for k in range(count)]


def _bcd(digits: str) -> bytes:
    padded = digits + "F" * (len(digits) % 2)
    return bytes(int(padded[i + 1] + padded[i], 16) for i in range(0, len(padded), 2))


def _address(number: str) -> bytes:
    """An address field: numbers as swapped BCD (type 0x91 international, 0x81 other),
    anything else as a GSM 7-bit alphanumeric address (type 0xD0)."""
    digits = number.lstrip("+")
    if digits.isascii() and digits.isdigit():
        return bytes([len(digits), 0x91 if number.startswith("+") else 0x81]) + _bcd(digits)
    septets = gsm7(number) or gsm7("?" * len(number)) or []
    packed = _bits_to_octets(septets, 0)
    return bytes([(len(septets) * 7 + 3) // 4, 0xD0]) + packed


def scts(when: datetime) -> str:
    """TP-SCTS as text mode prints it: "yy/MM/dd,hh:mm:ss+00" (UTC)."""
    return when.astimezone(timezone.utc).strftime("%y/%m/%d,%H:%M:%S") + "+00"


def _scts_octets(when: datetime) -> bytes:
    t = when.astimezone(timezone.utc)
    fields = (t.year % 100, t.month, t.day, t.hour, t.minute, t.second, 0)
    return bytes(((v % 10) << 4) | (v // 10) for v in fields)


def user_data(part: Part) -> tuple[int, bytes]:
    """(TP-UDL, TP-UD) of a part: UDL counts septets for GSM 7-bit, octets for UCS2."""
    if part.dcs == 0x08:
        ud = part.udh + part.text.encode("utf-16-be")
        return len(ud), ud
    septets = gsm7(part.text) or []
    if not part.udh:
        return len(septets), _bits_to_octets(septets, 0)
    fill = (7 - len(part.udh) * 8 % 7) % 7
    header_septets = (len(part.udh) * 8 + fill) // 7
    body = _bits_to_octets(septets, fill)
    ud = part.udh + body[: (fill + 7 * len(septets) + 7) // 8]
    return header_septets + len(septets), ud


def deliver(sender: str, part: Part, when: datetime) -> tuple[int, str]:
    """An SMS-DELIVER as AT+CMGR shows it in PDU mode: (TPDU octets, hex with SMSC part)."""
    udl, ud = user_data(part)
    first = 0x04 | (0x40 if part.udh else 0)  # SMS-DELIVER, no more messages, UDHI
    tpdu = (
        bytes([first])
        + _address(sender)
        + bytes([0x00, part.dcs])
        + _scts_octets(when)
        + bytes([udl])
        + ud
    )
    smsc_digits = SMSC.lstrip("+")
    smsc = bytes([1 + (len(smsc_digits) + 1) // 2, 0x91]) + _bcd(smsc_digits)
    return len(tpdu), (smsc + tpdu).hex().upper()


def read_submit(hex_pdu: str, length: int) -> tuple[str, str]:
    """(destination, text) of an SMS-SUBMIT the host wrote after AT+CMGS=<length>; raises
    PduError for anything the module would refuse."""
    try:
        octets = bytes.fromhex(hex_pdu)
    except ValueError:
        raise PduError("not hexadecimal") from None
    if not octets:
        raise PduError("empty PDU")
    pos = 1 + octets[0]  # skip the SMSC part
    tpdu = octets[pos:]
    if len(tpdu) != length:
        raise PduError(f"TPDU of {len(tpdu)} octets, AT+CMGS said {length}")
    try:
        first, digits, kind = tpdu[0], tpdu[2], tpdu[3]
        if first & 0b11 != 0b01:
            raise PduError("not an SMS-SUBMIT")
        i = 4 + (digits + 1) // 2
        swapped = tpdu[4:i].hex().upper()
        number = "".join(swapped[k + 1] + swapped[k] for k in range(0, len(swapped), 2))
        number = number[:digits]
        if kind >> 4 & 0b111 == 0b001:
            number = "+" + number
        dcs = tpdu[i + 1]
        vpf = (first >> 3) & 0b11
        i += 2 + {0: 0, 2: 1}.get(vpf, 7)
        udl = tpdu[i]
        ud = tpdu[i + 1 :]
    except IndexError:
        raise PduError("TPDU too short") from None
    udh = ud[: 1 + ud[0]] if first & 0x40 and ud else b""
    if dcs & 0x0C == 0x08:
        return number, ud[len(udh) :].decode("utf-16-be", "replace")
    fill = (7 - len(udh) * 8 % 7) % 7 if udh else 0
    skip = (len(udh) * 8 + fill) // 7
    septets = _octets_to_septets(ud[len(udh) :], udl - skip, fill)
    text, escape = [], False
    for s in septets:
        if escape:
            text.append(_FROM_EXTENSION.get(s, BASIC[s]))
            escape = False
        elif s == 0x1B:
            escape = True
        else:
            text.append(BASIC[s])
    return number, "".join(text)
