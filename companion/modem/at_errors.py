"""What a SIMCom A76xx error result means, in words a log reader understands.

The modem reports failures as bare codes: `+CME ERROR: 13`, `+CMS ERROR: 304`, or a result
line such as `+CMQTTCONNECT: 0,32` whose second field is an MQTT `<err>`. A driver that logs
"error 32" makes the operator look it up; `AtError` carries the manual's meaning next to the
code ("handshake fail"), so the log line and `ModemState.error` can say what went wrong.

Tables, from the A76XX AT Command Manual V1.09:
- `CME_ERRORS`: §28.3 "Summary of CME ERROR Codes" (equipment / SIM / network).
- `CMS_ERRORS`: §28.4 "Summary of CMS ERROR Codes" (SMS service).
- `MQTT_ERRORS`: §18.3.1 "Description of <err>" for the AT+CMQTT* result lines.
- `SOCKET_ERRORS`: §15.3.2 "Description of <err>" for AT+NETOPEN / NETCLOSE / CIPOPEN /
  CIPCLOSE result lines.

`+CME ERROR` comes numeric or verbose depending on AT+CMEE (§3.2.11); real modules print both
(`+CME ERROR: 13`, `+CME ERROR: SIM failure`), and some firmware puts SMS-range numbers in a
CME line (`+CME ERROR: 313` for AT+CPIN?), so `final_error` looks a number up in the CME
table first and falls back to the CMS one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    2: "phone adaptor link reserved",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    6: "PH-FSIM PIN required",
    7: "PH-FSIM PUK required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    26: "dial string too long",
    27: "invalid characters in dial string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    40: "network personalization PIN required",
    41: "network personalization PUK required",
    42: "network subset personalization PIN required",
    43: "network subset personalization PUK required",
    44: "service provider personalization PIN required",
    45: "service provider personalization PUK required",
    46: "corporate personalization PIN required",
    47: "corporate personalization PUK required",
    50: "Incorrect parameters",
    100: "unknown error",
    103: "Illegal MESSAGE",
    106: "Illegal ME",
    107: "GPRS services not allowed",
    111: "PLMN not allowed",
    112: "Location area not allowed",
    113: "Roaming not allowed in this location area",
    132: "service option not supported",
    133: "requested service option not subscribed",
    134: "service option temporarily out of order",
    148: "unspecified GPRS error",
    149: "PDP authentication failure",
    150: "invalid mobile class",
    151: "AT command timeout",
}

CMS_ERRORS: dict[int, str] = {
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "Operation not allowed",
    303: "Operation not supported",
    304: "Invalid PDU mode parameter",
    305: "Invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    312: "PH-SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    315: "SIM wrong",
    316: "SIM PUK required",
    317: "SIM PIN2 required",
    318: "SIM PUK2 required",
    320: "Memory failure",
    321: "Invalid memory index",
    322: "Memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "Network timeout",
    340: "no +CNMA acknowledgement expected",
    341: "Buffer overflow",
    342: "SMS size more than expected",
    500: "unknown error",
}

MQTT_ERRORS: dict[int, str] = {
    0: "operation succeeded",
    1: "failed",
    2: "bad UTF-8 string",
    3: "sock connect fail",
    4: "sock create fail",
    5: "sock close fail",
    6: "message receive fail",
    7: "network open fail",
    8: "network close fail",
    9: "network not opened",
    10: "client index error",
    11: "no connection",
    12: "invalid parameter",
    13: "not supported operation",
    14: "client is busy",
    15: "require connection fail",
    16: "sock sending fail",
    17: "timeout",
    18: "topic is empty",
    19: "client is used",
    20: "client not acquired",
    21: "client not released",
    22: "length out of range",
    23: "network is opened",
    24: "packet fail",
    25: "DNS error",
    26: "socket is closed by server",
    27: "connection refused: unaccepted protocol version",
    28: "connection refused: identifier rejected",
    29: "connection refused: server unavailable",
    30: "connection refused: bad user name or password",
    31: "connection refused: not authorized",
    32: "handshake fail",
    33: "not set certificate",
    34: "open session failed",
    35: "disconnect from server failed",
}

SOCKET_ERRORS: dict[int, str] = {
    0: "operation succeeded",
    1: "Network failure",
    2: "Network not opened",
    3: "Wrong parameter",
    4: "Operation not supported",
    5: "Failed to create socket",
    6: "Failed to bind socket",
    7: "TCP server is already listening",
    8: "Busy",
    9: "Sockets opened",
    10: "Timeout",
    11: "DNS parse failed for AT+CIPOPEN",
    12: "Unknown error",
}

#: "unframed": an SMS body the engine could not frame (held as data up to the deadline);
#: "overflow": an answer longer than the engine keeps.
ERROR_KINDS = (
    "error",
    "cme",
    "cms",
    "timeout",
    "no_carrier",
    "result",
    "reset",
    "unframed",
    "overflow",
)

# Tolerant of the manual's space-less spelling (`+CMEERROR:13`) next to the real one.
_CMX_RE = re.compile(r"^\+CM([ES])\s?ERROR\s*:\s*(.*)$")
# ASCII digits only, and few enough for a code: `\d` takes "٣", and int() refuses 4,300+ digits.
_NUMBER_RE = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class AtError:
    """Why an AT command failed: which kind of failure, the modem's code, and its meaning.

    `line` is the modem's own line the error came from (final result code or result line),
    empty for failures the engine decides itself (timeout, reset); `str()` gives both, for
    log lines and `ModemState.error`: "SIM failure (+CME ERROR: 13)".
    """

    kind: str
    code: int | None
    text: str
    line: str = ""

    def __str__(self) -> str:
        return f"{self.text} ({self.line})" if self.line else self.text


def _lookup_text(table: dict[int, str], text: str) -> int | None:
    """The number whose meaning is `text` (verbose +CME/+CMS form), ignoring case and spaces.

    Spaces are ignored because the manual's tables lost theirs in extraction and firmware
    spellings differ ("SIM failure", "SIMfailure").
    """
    wanted = text.replace(" ", "").lower()
    for code, meaning in table.items():
        if meaning.replace(" ", "").lower() == wanted:
            return code
    return None


def is_cme_or_cms(line: str) -> bool:
    """True for a `+CME ERROR: ...` or `+CMS ERROR: ...` final result code."""
    return _CMX_RE.match(line) is not None


def final_error(line: str) -> AtError | None:
    """The error a final result code stands for, or None for `OK` (and for non-final lines).

    Handles `ERROR`, `NO CARRIER`, `+CME ERROR: <n|text>` and `+CMS ERROR: <n|text>`.
    """
    if line == "OK":
        return None
    if line == "ERROR":
        return AtError(
            "error", None, "command rejected (syntax, bad parameter, or AT+CMEE=0)", line
        )
    if line == "NO CARRIER":
        return AtError("no_carrier", None, "connection ended (NO CARRIER)", line)
    match = _CMX_RE.match(line)
    if match is None:
        return None
    kind = "cme" if match.group(1) == "E" else "cms"
    value = match.group(2).strip()
    primary, secondary = (CME_ERRORS, CMS_ERRORS) if kind == "cme" else (CMS_ERRORS, CME_ERRORS)
    if _NUMBER_RE.fullmatch(value):
        code = int(value)
        text = primary.get(code) or secondary.get(code) or f"unknown {kind.upper()} error {code}"
        return AtError(kind, code, text, line)
    code = _lookup_text(primary, value)
    if code is None:
        code = _lookup_text(secondary, value)
    return AtError(kind, code, value or f"{kind.upper()} error without a code", line)


def result_table(prefix: str) -> dict[int, str]:
    """The `<err>` table for a result line's prefix: MQTT for `+CMQTT*`, else sockets."""
    return MQTT_ERRORS if prefix.upper().startswith("+CMQTT") else SOCKET_ERRORS


def result_error(prefix: str, code: int, line: str) -> AtError:
    """An `<err>` from a result line like `+CMQTTCONNECT: 0,32` or `+NETOPEN: 1`."""
    table = result_table(prefix)
    text = table.get(code, f"unknown {prefix} error {code}")
    return AtError("result", code, text, line)
