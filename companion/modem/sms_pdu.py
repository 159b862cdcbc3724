"""SMS in PDU mode: reading SMS-DELIVER, writing SMS-SUBMIT (3GPP TS 23.040 §9.2, TS 23.038).

The driver keeps the A7670 in PDU mode (AT+CMGF=0) because text mode cannot be framed
safely: a text-mode body, and even an alphanumeric sender, may hold CR, LF and whole lines
that look like result codes, and only AT+CSDH=1 gives the body a length at all (A76XX AT
Command Manual V1.09 §9.2.7, §9.2.12). A PDU is one line of hex whose length the header
states, so nothing a sender writes can reach the AT engine as a line.

`sender_of` reads a PDU only as far as the originating address, so the sender is known (and
checked) before the user data is decoded at all. Every malformed PDU raises `PduError`
naming what is wrong and where; nothing else escapes.

Alphabets (TS 23.038 §6.2.1, §4): the GSM 7-bit default alphabet with its extension table,
8-bit data, and UCS2 (read as UTF-16, so surrogate pairs come out whole). User-data
headers (§9.2.3.24) are skipped, and a concatenation element (IEI 0 or 8) is reported so
that a part of a longer message is known as such.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "MAX_SEPTETS",
    "Deliver",
    "PduError",
    "decode_deliver",
    "encode_submit",
    "gsm7_septets",
    "pack_septets",
    "sender_of",
    "unpack_septets",
]

#: TS 23.038 §6.2.1: the GSM 7-bit default alphabet, by septet value.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: TS 23.038 §6.2.1.1: the extension table, reached through the escape septet 0x1B.
GSM7_EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
_ESCAPE = 0x1B
_TO_SEPTET = {ch: i for i, ch in enumerate(GSM7_BASIC) if i != _ESCAPE}
_TO_EXTENSION = {ch: code for code, ch in GSM7_EXTENSION.items()}

#: Septets in the user data of one SMS (140 octets, TS 23.040 §9.2.3.16).
MAX_SEPTETS = 160
_MAX_UD_OCTETS = 140

# TP-MTI (TS 23.040 §9.2.3.1), seen from the receiving side.
_MTI_DELIVER = 0b00
_MTI_NAMES = {0b01: "SMS-SUBMIT-REPORT", 0b10: "SMS-STATUS-REPORT", 0b11: "reserved type"}
_TON_ALPHANUMERIC = 0b101
_TON_INTERNATIONAL = 0b001


class PduError(ValueError):
    """A PDU that is not a well-formed SMS-DELIVER (or text that cannot be sent): the
    message says what is wrong and at which octet."""


@dataclass(frozen=True)
class Deliver:
    """A received SMS (SMS-DELIVER). `sender` is "+<digits>" for an international number,
    the digits for another numeric one, the text for an alphanumeric one (`sender_numeric`
    False). `timestamp` is the service centre's "yy/MM/dd,hh:mm:ss±zz" (zz in quarter
    hours). `text` is the user data decoded (8-bit data as Latin-1, `binary` True);
    `part` is (reference, total, number) for a part of a concatenated message."""

    smsc: str
    sender: str
    sender_numeric: bool
    timestamp: str
    pid: int
    dcs: int
    text: str
    binary: bool
    part: tuple[int, int, int] | None


class _Reader:
    """Octets of a PDU with a position, raising `PduError` that names the field."""

    def __init__(self, octets: bytes) -> None:
        self.octets = octets
        self.pos = 0

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.pos + count > len(self.octets):
            raise PduError(
                f"PDU ends at octet {len(self.octets)} inside {what} "
                f"(needs {count} octets from octet {self.pos})"
            )
        chunk = self.octets[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def octet(self, what: str) -> int:
        return self.take(1, what)[0]


def _octets(pdu: str | bytes) -> bytes:
    text = pdu.decode("ascii", "replace") if isinstance(pdu, bytes) else pdu
    text = text.strip()
    if len(text) % 2 or any(c not in "0123456789ABCDEFabcdef" for c in text):
        raise PduError("a PDU is an even number of hexadecimal digits")
    return bytes.fromhex(text)


def _semi_octets(data: bytes, digits: int) -> str:
    """Swapped BCD digits (TS 23.040 §9.1.2.3); 0xF pads an odd count."""
    out = []
    for octet in data:
        for nibble in (octet & 0x0F, octet >> 4):
            if nibble <= 9:
                out.append(chr(0x30 + nibble))
            elif nibble == 0xF:
                continue
            else:  # *, #, a, b, c: possible in a dialled string, never in a sender we trust
                out.append("*#abc"[nibble - 10])
    return "".join(out[:digits])


def _address(reader: _Reader, what: str) -> tuple[str, bool]:
    """An address field (TS 23.040 §9.1.2.5): length in semi-octets, type, value."""
    length = reader.octet(f"the {what} length")
    kind = reader.octet(f"the {what} type")
    value = reader.take((length + 1) // 2, f"the {what}")
    ton = (kind >> 4) & 0b111
    if ton == _TON_ALPHANUMERIC:
        septets = length * 4 // 7
        return _decode_gsm7(unpack_septets(value, septets, 0)), False
    digits = _semi_octets(value, length)
    return ("+" + digits if ton == _TON_INTERNATIONAL else digits), True


def _smsc(reader: _Reader) -> str:
    """The SMSC address before the TPDU: a length in octets, then type and BCD digits."""
    length = reader.octet("the SMSC length")
    if length == 0:
        return ""
    kind = reader.octet("the SMSC type")
    digits = _semi_octets(reader.take(length - 1, "the SMSC address"), 2 * (length - 1))
    return ("+" if (kind >> 4) & 0b111 == _TON_INTERNATIONAL else "") + digits


def _timestamp(data: bytes) -> str:
    """TP-SCTS (TS 23.040 §9.2.3.11): seven swapped-BCD octets, the last the zone in
    quarter hours with its sign in bit 3."""
    fields = [(o & 0x0F) * 10 + (o >> 4) for o in data[:6]]
    zone = data[6]
    quarters = (zone & 0x07) * 10 + (zone >> 4)
    sign = "-" if zone & 0x08 else "+"
    yy, mo, dd, hh, mi, ss = fields
    return f"{yy:02d}/{mo:02d}/{dd:02d},{hh:02d}:{mi:02d}:{ss:02d}{sign}{quarters:02d}"


def sender_of(pdu: str | bytes) -> tuple[str, bool]:
    """The originating address of an SMS-DELIVER PDU (with SMSC part) and whether it is a
    number, read without touching the user data. Raises `PduError`."""
    reader = _Reader(_octets(pdu))
    _smsc(reader)
    first = reader.octet("the first octet")
    mti = first & 0b11
    if mti != _MTI_DELIVER:
        raise PduError(f"not an SMS-DELIVER but an {_MTI_NAMES[mti]} (first octet {first:#04x})")
    return _address(reader, "originating address")


def decode_deliver(pdu: str | bytes) -> Deliver:
    """An SMS-DELIVER PDU as the module shows it (SMSC part, then TPDU). Raises `PduError`."""
    reader = _Reader(_octets(pdu))
    smsc = _smsc(reader)
    first = reader.octet("the first octet")
    mti = first & 0b11
    if mti != _MTI_DELIVER:
        raise PduError(f"not an SMS-DELIVER but an {_MTI_NAMES[mti]} (first octet {first:#04x})")
    sender, numeric = _address(reader, "originating address")
    pid = reader.octet("TP-PID")
    dcs = reader.octet("TP-DCS")
    timestamp = _timestamp(reader.take(7, "TP-SCTS"))
    udl = reader.octet("TP-UDL")
    alphabet = _alphabet(dcs)
    ud_octets = (udl * 7 + 7) // 8 if alphabet == "gsm7" else udl
    if ud_octets > _MAX_UD_OCTETS:
        raise PduError(f"TP-UDL {udl} means {ud_octets} octets of user data, over 140")
    ud = reader.take(ud_octets, "the user data")
    if reader.pos != len(reader.octets):
        raise PduError(f"{len(reader.octets) - reader.pos} octets after the user data")
    header = b""
    if first & 0x40:  # TP-UDHI: the user data starts with a header
        if not ud:
            raise PduError("TP-UDHI set but no user data")
        header = ud[: 1 + ud[0]]
        if len(header) != 1 + ud[0]:
            raise PduError(f"user-data header of {ud[0]} octets in {len(ud) - 1}")
    part = _concatenation(header[1:])
    if alphabet == "gsm7":
        skip = (len(header) * 8 + 6) // 7  # header septets, fill bits included
        if skip > udl:
            raise PduError(f"user-data header longer than TP-UDL {udl} septets")
        text = _decode_gsm7(unpack_septets(ud, udl, 0)[skip:])
        return Deliver(smsc, sender, numeric, timestamp, pid, dcs, text, False, part)
    body = ud[len(header) :]
    if alphabet == "ucs2":
        if len(body) % 2:
            raise PduError(f"UCS2 user data of an odd {len(body)} octets")
        text = body.decode("utf-16-be", "replace")
        return Deliver(smsc, sender, numeric, timestamp, pid, dcs, text, False, part)
    return Deliver(smsc, sender, numeric, timestamp, pid, dcs, body.decode("latin-1"), True, part)


def _alphabet(dcs: int) -> str:
    """TS 23.038 §4: "gsm7", "8bit" or "ucs2" for a data coding scheme."""
    group = dcs >> 4
    if group <= 0b0111:
        if dcs & 0x20:
            raise PduError(f"TP-DCS {dcs:#04x}: compressed user data is not supported")
        return ("gsm7", "8bit", "ucs2", "gsm7")[(dcs >> 2) & 0b11]
    if group in (0b1100, 0b1101):  # message waiting, store
        return "gsm7"
    if group == 0b1110:
        return "ucs2"
    if group == 0b1111:
        return "8bit" if dcs & 0b100 else "gsm7"
    raise PduError(f"TP-DCS {dcs:#04x} is a reserved coding group")


def _concatenation(header: bytes) -> tuple[int, int, int] | None:
    """The concatenation element of a user-data header (TS 23.040 §9.2.3.24.1, .8):
    (reference, total parts, this part's number), or None."""
    i = 0
    while i + 2 <= len(header):
        iei, length = header[i], header[i + 1]
        value = header[i + 2 : i + 2 + length]
        if len(value) != length:
            raise PduError("user-data header element runs past the header")
        if iei == 0x00 and length == 3:
            return value[0], value[1], value[2]
        if iei == 0x08 and length == 4:
            return (value[0] << 8) | value[1], value[2], value[3]
        i += 2 + length
    return None


def unpack_septets(data: bytes, count: int, fill_bits: int) -> list[int]:
    """`count` septets packed little-endian into `data` after `fill_bits` bits
    (TS 23.038 §6.1.2.1.1)."""
    septets = []
    bits = fill_bits
    for _ in range(count):
        index, shift = divmod(bits, 8)
        if index >= len(data):
            raise PduError(f"user data ends before septet {len(septets) + 1} of {count}")
        value = data[index] >> shift
        if shift > 1:
            if index + 1 >= len(data):
                raise PduError(f"user data ends inside septet {len(septets) + 1} of {count}")
            value |= data[index + 1] << (8 - shift)
        septets.append(value & 0x7F)
        bits += 7
    return septets


def pack_septets(septets: list[int]) -> bytes:
    """Septets packed little-endian into octets (TS 23.038 §6.1.2.1.1)."""
    out = bytearray()
    acc = bits = 0
    for septet in septets:
        acc |= (septet & 0x7F) << bits
        bits += 7
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        out.append(acc & 0xFF)
    return bytes(out)


def _decode_gsm7(septets: list[int]) -> str:
    out = []
    escaped = False
    for septet in septets:
        if escaped:
            # An escape before a value the extension table lacks shows the basic character
            # (TS 23.038 §6.2.1.1 note 1).
            out.append(GSM7_EXTENSION.get(septet, GSM7_BASIC[septet]))
            escaped = False
        elif septet == _ESCAPE:
            escaped = True
        else:
            out.append(GSM7_BASIC[septet])
    return "".join(out)


def gsm7_septets(text: str) -> list[int]:
    """`text` in the GSM 7-bit default alphabet; PduError names the first character it
    lacks."""
    septets: list[int] = []
    for ch in text:
        if ch in _TO_SEPTET:
            septets.append(_TO_SEPTET[ch])
        elif ch in _TO_EXTENSION:
            septets += [_ESCAPE, _TO_EXTENSION[ch]]
        else:
            raise PduError(f"{ch!r} is not in the GSM 7-bit alphabet")
    return septets


def encode_submit(number: str, text: str, *, validity: int = 167) -> tuple[int, str]:
    """An SMS-SUBMIT of `text` (GSM 7-bit, one message) to `number` ("+<digits>" or
    digits): (TPDU octets for AT+CMGS=<length>, the PDU in hex with an empty SMSC part,
    so the SIM's service centre is used). `validity` is TP-VP, relative (167: 24 hours,
    the manual's AT+CSMP default)."""
    digits = number[1:] if number.startswith("+") else number
    if not digits.isascii() or not digits.isdigit() or not 1 <= len(digits) <= 20:
        raise PduError(f"not a phone number: {number!r}")
    if not 0 <= validity <= 255:
        raise PduError(f"TP-VP {validity} outside 0-255")
    septets = gsm7_septets(text)
    if not 1 <= len(septets) <= MAX_SEPTETS:
        raise PduError(
            f"a single SMS holds 1-{MAX_SEPTETS} septets, this text needs {len(septets)}"
        )
    padded = digits + ("F" if len(digits) % 2 else "")
    address = "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))
    kind = 0x91 if number.startswith("+") else 0x81
    tpdu = (
        bytes([0x11, 0x00, len(digits), kind])  # SUBMIT with relative TP-VP; MR set by module
        + bytes.fromhex(address)
        + bytes([0x00, 0x00, validity, len(septets)])  # PID, DCS GSM 7-bit, VP, UDL
        + pack_septets(septets)
    )
    return len(tpdu), "00" + tpdu.hex().upper()
