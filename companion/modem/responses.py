"""Reading the A7670's answers: failed responses in words, information values, signal
figures (CSQ, CPSI) and APN checks — the parsing the supervisor, the MQTT transport and SMS
share, kept apart from the state machine that uses it.
"""

from __future__ import annotations

from companion.modem.at_engine import AtResponse, ascii_int


def describe(response: AtResponse) -> str:
    """A failed response in words: "+CME ERROR: incorrect password", "+CMQTTCONNECT: 0,32
    (handshake fail)", "AT+CSQ: no final result code within 9 s"."""
    error = response.error
    if error is None:
        return "OK"
    if error.kind == "cme":
        return f"+CME ERROR: {error.text}"
    if error.kind == "cms":
        return f"+CMS ERROR: {error.text}"
    if error.kind == "timeout":
        return error.text  # the engine says which wait ran out and for how long
    if error.kind == "result":
        return f"{response.result_line} ({error.text})"
    if error.kind == "reset":
        return f"aborted: {error.text}"
    detail = "; ".join(line for line in response.lines if line.strip())
    return f"{response.final} ({detail})" if detail else response.final


def info_value(response: AtResponse, prefix: str) -> str | None:
    """The text after "<prefix>:" in the response's information (or result) lines."""
    candidates = [*response.lines]
    if response.result_line is not None:
        candidates.append(response.result_line)
    for line in candidates:
        if line.startswith(prefix + ":"):
            return line[len(prefix) + 1 :].strip()
    return None


def already_open(response: AtResponse) -> bool:
    """`+IPERROR: Network is already opened` / `+IP ERROR: ...` then ERROR (§15.2.1)."""
    return any("already opened" in line.lower() for line in response.lines)


def csq_text_to_dbm(value: str) -> int | None:
    """+CSQ <rssi> to dBm: 0 -> -113, 2..30 -> -113 + 2 rssi, 31 -> -51, 99 unknown
    (A76XX AT Command Manual V1.09 §3.2.2)."""
    rssi = ascii_int(value.split(",")[0])
    return None if rssi is None else csq_to_dbm(rssi)


def csq_to_dbm(rssi: int) -> int | None:
    if rssi == 99 or not 0 <= rssi <= 31:
        return None
    return -113 + 2 * rssi


def parse_cpsi(value: str) -> tuple[str, float | None, float | None, float | None]:
    """`+CPSI:` text -> (RAT, RSRP dBm, RSRQ dB, SINR dB). LTE: RSRP = value - 140,
    RSRQ = (value - 40) / 2 (§4.2.9); RSSNR is taken as dB (the manual gives no scale; real
    logs show -4..19). Firmware that already prints negative dBm/dB is taken as is."""
    fields = [f.strip() for f in value.split(",")]
    mode = fields[0].upper().replace(" ", "")
    if mode == "LTE" and len(fields) >= 14:
        rsrq, rsrp, sinr = _num(fields[10]), _num(fields[11]), _num(fields[13])
        return (
            "LTE",
            None if rsrp is None else (rsrp if rsrp < 0 else rsrp - 140),
            None if rsrq is None else (rsrq if rsrq < 0 else (rsrq - 40) / 2),
            sinr,
        )
    if mode in ("GSM", "WCDMA", "LTE"):
        return mode, None, None, None
    return "NO SERVICE", None, None, None


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_apn(apn: str) -> None:
    """APNs are ASCII labels (3GPP TS 23.003 §9.1): refuse what would break the AT line."""
    if not apn or len(apn) > 100 or any(c in apn for c in '"\r\n,') or not apn.isascii():
        raise ValueError(f"invalid APN {apn!r}: ASCII, 1-100 characters, no quotes or commas")
