"""Start-up configuration of a u-blox 6/7 receiver (NEO-6M and its look-alikes) over UBX.

A sans-I/O core in the shape of `firmware_bridge.transaction.Transaction`: `start(now)`,
`receive(msg, now)` and `tick(now)` return the raw bytes to send (b"" when nothing);
`deadline` says when `tick` is due; once `finished`, `result()` returns a
`UbxConfigResult` or raises a `UbxConfigError`. `receive` takes messages already parsed
by pyubx2 (`UBXReader.parse`) and ignores whatever is not its answer (NMEA keeps flowing
during the exchange, and other UBX output may be enabled).

The sequence (u-blox 6 Receiver Description including Protocol Specification,
GPS.G6-SW-10018; u-blox 7 Receiver Description, GPS.G7-SW-12001, same message layouts):

1. poll MON-VER and record software/hardware version and extensions; the protocol
   version decides what UBX navigation output exists (NAV-PVT from protocol 14 only);
2. poll CFG-PRT without a port id, which answers for "the used I/O port": the port the
   host is wired to, UART1 (the board's pins or a USB-serial bridge) or the module's own
   USB. A receiver that NAKs the poll is taken to be on UART1;
3. on UART1, CFG-PRT: baud rate, UBX+NMEA in and out (on USB there is no line rate to
   set). When the rate changes, the receiver switches as soon as it applies the message,
   so its ACK may come at the old rate, at the new one, or be lost in the switch (CFG-PRT
   description: "a message currently in transmission may be corrupted by a protocol
   change. Host data reception parameters may have to be changed to be able to receive
   future messages, including the acknowledge message resulting from the CFG-PRT
   message"). That step is therefore explicit: after the old-rate ACK window,
   `pending_baud` names the rate the transport must re-open the port at; it then calls
   `baud_changed(now)`, having read and fed everything that arrived before the switch, so
   that whatever it feeds from then on arrived at the new rate; the core polls CFG-PRT
   there, and the answer, or the CFG-PRT ACK-ACK if that is what arrives at the new rate,
   proves the switch;
4. CFG-RATE: measurement period (200 ms = 5 Hz), navRate 1, time reference GPS;
5. CFG-NAV5: dynamic platform model airborne <2g;
6. CFG-MSG per NMEA sentence (and UBX NAV messages if asked for), in the three-byte "Set
   Message Rate" form, which sets the rate on the port the message came in on and leaves
   the others alone (the eight-byte form sets all six ports, so one written for UART1
   silences a receiver wired by USB). ArduPilot's AP_GPS_UBLOX and gpsd's driver_ubx.c
   configure rates with the same three-byte form;
7. optionally CFG-CFG: save the configuration. The NEO-6M has no flash (a ROM part): it
   keeps a configuration in battery-backed RAM, while the board's backup battery or
   supercap lasts, and in an I2C EEPROM where the board has one. deviceMask names BBR,
   and the EEPROM when `eeprom` says the board has one; `UbxConfigResult.saved_to` says
   which.

Each CFG message waits for ACK-ACK or ACK-NAK whose class/id match it (UBX-ACK: the
payload carries the class and id of the message acknowledged, nothing more); one message is
in flight at a time, because several CFG-MSG in a row share a class/id and only their order
tells their acknowledgements apart.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pyubx2 import POLL, SET, UBXMessage

from companion.gps.stream import nmea_checksum, ubx_checksum

# -- constants from the protocol specification -------------------------------------------

UBX_CLASS_CFG = 0x06
UBX_CLASS_NMEA = 0xF0
UBX_CLASS_NAV = 0x01

#: CFG message ids (GPS.G6-SW-10018, "UBX-CFG" message overview).
CFG_IDS = {"CFG-PRT": 0x00, "CFG-MSG": 0x01, "CFG-RATE": 0x08, "CFG-CFG": 0x09, "CFG-NAV5": 0x24}

#: I/O port ids (CFG-PRT portID, GPS.G6-SW-10018 "Port Configuration").
PORT_NAMES = {0: "DDC", 1: "UART1", 2: "UART2", 3: "USB", 4: "SPI"}
PORT_UART1 = 1

#: Standard NMEA messages as UBX class 0xF0 ids, for CFG-MSG ("NMEA Messages Overview").
NMEA_MSG_IDS = {
    "GGA": 0x00,
    "GLL": 0x01,
    "GSA": 0x02,
    "GSV": 0x03,
    "RMC": 0x04,
    "VTG": 0x05,
    "ZDA": 0x08,
}

#: UBX navigation messages used when UBX navigation output is wanted.
NAV_MSG_IDS = {
    "NAV-POSLLH": 0x02,
    "NAV-STATUS": 0x03,
    "NAV-SOL": 0x06,
    "NAV-PVT": 0x07,
    "NAV-VELNED": 0x12,
}

#: CFG-NAV5 dynModel values (GPS.G6-SW-10018, CFG-NAV5): 0 portable, 2 stationary,
#: 3 pedestrian, 4 automotive, 5 sea, 6 airborne <1g, 7 airborne <2g, 8 airborne <4g.
DYN_MODEL_PORTABLE = 0
DYN_MODEL_AIRBORNE_1G = 6
DYN_MODEL_AIRBORNE_2G = 7
DYN_MODEL_AIRBORNE_4G = 8
DYN_MODELS = frozenset({0, 2, 3, 4, 5, 6, 7, 8})

#: CFG-RATE timeRef: 0 UTC, 1 GPS time.
TIME_REF_UTC = 0
TIME_REF_GPS = 1

#: The rates the auto-detection tries, the NEO-6M factory default (9600) first.
BAUD_RATES = (9600, 19200, 38400, 57600, 115200)

#: CFG-PRT UART mode 8N1: charLen 3 (8 bit), parity 4 (none), nStopBits 0 (1), and bit 4
#: set "for compatibility with ANTARIS 4" (the receiver's own default mode word 0x08D0).
_UART_MODE_8N1 = {"reserved2": 0x10, "charLen": 3, "parity": 4, "nStopBits": 0}

#: Firmware version -> protocol version, for receivers whose MON-VER carries no PROTVER
#: extension (protocol < 15). From gpsd's driver_ubx.c `fw_protver_map`, itself based on
#: u-blox GPS.G7-SW-12001-B1.
_FW_PROTVER = {
    "4.00": 10.0,
    "4.01": 10.01,
    "5.00": 11.0,
    "6.00": 12.0,
    "6.02": 12.02,
    "7.01": 13.01,
    "7.03": 13.03,
    "1.00": 14.0,
}

#: hwVersion -> receiver generation (the values MON-VER reports on real parts).
_HW_GENERATION = {
    "00040005": "u-blox 5",
    "00040007": "u-blox 6",
    "00070000": "u-blox 7",
    "00080000": "u-blox M8",
}


# -- errors -----------------------------------------------------------------------------


class UbxConfigError(Exception):
    """Base of the errors `UbxConfigurator.result()` raises; the message names the cause."""


class UbxNak(UbxConfigError):
    """The receiver answered a CFG message with ACK-NAK (message not supported or invalid)."""

    def __init__(self, what: str, msg_class: int, msg_id: int) -> None:
        self.what = what
        self.msg_class = msg_class
        self.msg_id = msg_id
        super().__init__(
            f"{what} rejected by the receiver: ACK-NAK for class 0x{msg_class:02X}"
            f" id 0x{msg_id:02X}"
        )


class UbxTimeout(UbxConfigError):
    """No answer to a poll or CFG message after every retry."""


class UbxBaudError(UbxConfigError):
    """After CFG-PRT changed the rate, the receiver did not answer at the new rate."""


# -- receiver identification -------------------------------------------------------------


@dataclass(frozen=True)
class ReceiverVersion:
    """What MON-VER says: software and hardware version strings and the extensions.

    u-blox 6 firmware 7.03 reports no extension naming its protocol; u-blox 7 (ROM CORE
    1.00, often sold as "NEO-6M") and later report "PROTVER 14.00" or "PROTVER=18.00".
    """

    sw_version: str
    hw_version: str
    extensions: tuple[str, ...] = ()

    @property
    def generation(self) -> str:
        """The generation from hwVersion ("u-blox 6", ...), or "unknown (hw ...)"."""
        return _HW_GENERATION.get(self.hw_version, f"unknown (hw {self.hw_version})")

    @property
    def protocol_version(self) -> float | None:
        """The UBX protocol version: PROTVER extension, else inferred from the firmware."""
        for ext in self.extensions:
            match = re.match(r"PROTVER[ =]?\s*(\d+(?:\.\d+)?)", ext)
            if match:
                return float(match.group(1))
        match = re.match(r"\s*(\d+\.\d+)", self.sw_version)
        return _FW_PROTVER.get(match.group(1)) if match else None

    @property
    def has_nav_pvt(self) -> bool:
        """NAV-PVT exists from protocol 14 (u-blox 7, GPS.G7-SW-12001); u-blox 6
        (protocol 12-13) has only NAV-POSLLH/SOL/VELNED."""
        version = self.protocol_version
        return version is not None and version >= 14.0


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.split(b"\x00", 1)[0].decode("ascii", "replace")
    return str(value).strip()


def parse_mon_ver(msg: UBXMessage) -> ReceiverVersion:
    """A `ReceiverVersion` from a parsed MON-VER (swVersion C30, hwVersion C10, then any
    number of 30-byte extension strings, GPS.G6-SW-10018 MON-VER)."""
    extensions = []
    index = 1
    while hasattr(msg, f"extension_{index:02d}"):
        text = _text(getattr(msg, f"extension_{index:02d}"))
        if text:
            extensions.append(text)
        index += 1
    return ReceiverVersion(
        _text(getattr(msg, "swVersion", b"")),
        _text(getattr(msg, "hwVersion", b"")),
        tuple(extensions),
    )


# -- the configuration sequence ----------------------------------------------------------


@dataclass(frozen=True)
class UbxConfigResult:
    """The outcome: who answered, on which port, the rate the port now runs at, what was
    applied, and where the configuration was saved (empty: until the next power loss)."""

    version: ReceiverVersion
    port: str
    baud: int
    meas_rate_ms: int
    applied: tuple[str, ...]
    saved_to: tuple[str, ...]
    #: False when no CFG-PRT acknowledgement came at the old rate (it was lost in the
    #: switch, or sent at the new rate): the new rate was then proven at that rate.
    baud_change_acked: bool = True

    def describe(self) -> str:
        """One line for people: `skycourier gps monitor` and the driver's status."""
        where = (
            "saved to " + " and ".join(self.saved_to)
            if self.saved_to
            else "not saved (lasts until the receiver loses power)"
        )
        rate = f"{1000 / self.meas_rate_ms:g} Hz"
        line = "" if self.port != "UART1" else f" at {self.baud} baud"
        return (
            f"{self.version.generation} (software {self.version.sw_version}) on"
            f" {self.port}{line}, {rate}; {where}"
        )


@dataclass
class _Step:
    """One request and the answer it waits for."""

    what: str  # for errors: "CFG-NAV5 (dynModel 7)"
    frame: bytes
    msg_class: int
    msg_id: int
    kind: str = "ack"  # "ack": ACK-ACK/NAK; "monver": MON-VER; "port": the port poll;
    # "prt": baud change
    sends: int = 0


@dataclass(eq=False, kw_only=True)
class UbxConfigurator:
    """Configure a NEO-6M class receiver; see the module docstring for the sequence.

    `baud` is the rate wanted, `current_baud` the one the host talks at now (found by
    `detect_baud`). `nmea_on` sentences are enabled once per fix on the host's port and
    `nmea_off` disabled. `ubx_nav` adds UBX navigation output adapted to the receiver:
    NAV-PVT where the protocol has it, else NAV-POSLLH + NAV-SOL + NAV-VELNED. `save`
    persists the result with CFG-CFG to BBR, and to the board's EEPROM when `eeprom` says
    it has one. Each request is re-sent every `timeout` seconds up to `retries` times.
    """

    baud: int = 115200
    current_baud: int = 9600
    meas_rate_ms: int = 200
    dyn_model: int = DYN_MODEL_AIRBORNE_2G
    nmea_on: Sequence[str] = ("GGA", "RMC", "GSA", "GSV", "VTG")
    nmea_off: Sequence[str] = ("GLL",)
    ubx_nav: bool = False
    save: bool = False
    eeprom: bool = False
    timeout: float = 1.0
    retries: int = 3
    version: ReceiverVersion | None = field(default=None, init=False)
    #: The port the host is wired to, once the CFG-PRT poll answered ("UART1", "USB").
    port: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        if self.dyn_model not in DYN_MODELS:
            raise ValueError(f"dyn_model {self.dyn_model} is not a CFG-NAV5 dynModel")
        # u-blox 6 navigates at most at 5 Hz (GPS.G6-SW-10018, CFG-RATE / data sheet).
        if not 200 <= self.meas_rate_ms <= 65535:
            raise ValueError(f"meas_rate_ms {self.meas_rate_ms}: must be 200..65535")
        for name in (*self.nmea_on, *self.nmea_off):
            if name not in NMEA_MSG_IDS:
                raise ValueError(f"unknown NMEA sentence {name!r}")
        self._steps: list[_Step] = []
        self._applied: list[str] = []
        self._deadline: float | None = None
        self._finished = False
        self._error: UbxConfigError | None = None
        self._pending_baud: int | None = None
        self._baud_acked = True
        self._verifying = False

    # -- Transaction shape --

    @property
    def finished(self) -> bool:
        """True once `result()` has an outcome; later messages and ticks are ignored."""
        return self._finished

    @property
    def deadline(self) -> float | None:
        """Clock reading at which `tick` must next be called; None when nothing is pending
        (finished, or waiting for the transport to switch rate: see `pending_baud`)."""
        return self._deadline

    @property
    def pending_baud(self) -> int | None:
        """The rate the transport must re-open the port at, then call `baud_changed`."""
        return self._pending_baud

    def start(self, now: float) -> bytes:
        """Begin with the MON-VER poll; returns its bytes."""
        self._steps = [
            _Step(
                "MON-VER poll",
                UBXMessage("MON", "MON-VER", POLL).serialize(),
                0x0A,
                0x04,
                kind="monver",
            )
        ]
        return self._send(now)

    def receive(self, msg: UBXMessage, now: float) -> bytes:
        """Feed one parsed UBX message; returns the bytes to send next. Never raises."""
        if self._finished or not self._steps:
            return b""
        step = self._steps[0]
        identity = getattr(msg, "identity", "")
        if step.kind == "monver":
            if identity == "MON-VER":
                self.version = parse_mon_ver(msg)
                self._steps = [self._port_step()]
                return self._send(now)
            return b""
        ack = (getattr(msg, "clsID", None), getattr(msg, "msgID", None))
        if step.kind == "port":
            if identity == "CFG-PRT":
                port_id = getattr(msg, "portID", None)
                self.port = PORT_NAMES.get(port_id, f"port {port_id}")
            elif identity == "ACK-NAK" and ack == (UBX_CLASS_CFG, CFG_IDS["CFG-PRT"]):
                self.port = "UART1"  # no answer for "the used port": the usual wiring
            else:
                return b""
            assert self.version is not None
            self._steps = self._plan(self.version)
            return self._send(now)
        if self._verifying:
            # Anything that proves the receiver talks at the new rate: the answer to our
            # poll, or the CFG-PRT acknowledgement, decoded from bytes that arrived after
            # the transport switched (see `baud_changed`).
            proof = (identity == "CFG-PRT" and getattr(msg, "baudRate", None) == self.baud) or (
                identity == "ACK-ACK" and ack == (step.msg_class, step.msg_id)
            )
            if proof:
                self._verifying = False
                self.current_baud = self.baud
                return self._next(now)
            if identity == "ACK-NAK" and ack == (step.msg_class, step.msg_id):
                self._fail(UbxNak(step.what, step.msg_class, step.msg_id))
            return b""
        if identity not in ("ACK-ACK", "ACK-NAK"):
            return b""
        if ack != (step.msg_class, step.msg_id):
            return b""  # an acknowledgement of something else (another tool, a late copy)
        if identity == "ACK-NAK":
            self._fail(UbxNak(step.what, step.msg_class, step.msg_id))
            return b""
        if step.kind == "prt":
            # Also while `pending_baud` waits on the transport: a late ACK at the old rate.
            self._baud_acked = True
            return self._ask_baud_switch() if self._pending_baud is None else b""
        return self._next(now)

    def tick(self, now: float) -> bytes:
        """Let time pass: re-send the pending request, or give up, once `deadline` passes."""
        if self._finished or self._deadline is None or now < self._deadline:
            return b""
        step = self._steps[0]
        if step.kind == "prt" and not self._verifying:
            # No ACK at the old rate: it may be lost in the switch, or the receiver already
            # talks at the new rate. Not re-sent; the poll at the new rate settles it.
            self._baud_acked = False
            return self._ask_baud_switch()
        if step.sends <= self.retries:
            return self._send(now)
        if self._verifying:
            self._fail(self._baud_error(step.sends))
        else:
            hint = (
                " (not a u-blox receiver, or the wrong baud rate?)" if step.kind == "monver" else ""
            )
            self._fail(
                UbxTimeout(
                    f"{step.what}: no answer after {step.sends} tries,"
                    f" {self.timeout:g} s each{hint}"
                )
            )
        return b""

    def baud_changed(self, now: float) -> bytes:
        """The transport now talks at `pending_baud`, and feeds only what arrives from now
        on; verify with a CFG-PRT poll there."""
        if self._pending_baud is None or self._finished:
            return b""
        self._pending_baud = None
        self._verifying = True
        step = self._steps[0]
        step.frame = UBXMessage("CFG", "CFG-PRT", POLL, portID=PORT_UART1).serialize()
        step.sends = 0
        return self._send(now)

    def result(self) -> UbxConfigResult:
        """The outcome, or the `UbxConfigError` that ended the sequence."""
        if not self._finished:
            raise RuntimeError("UbxConfigurator has not finished")
        if self._error is not None:
            raise self._error
        assert self.version is not None and self.port is not None
        return UbxConfigResult(
            self.version,
            self.port,
            self.current_baud,
            self.meas_rate_ms,
            tuple(self._applied),
            self._saved_to() if self.save else (),
            self._baud_acked,
        )

    # -- internals --

    def _plan(self, version: ReceiverVersion) -> list[_Step]:
        """The CFG messages, adapted to the receiver MON-VER identified and the port."""
        steps = [self._prt_step()] if self.port == "UART1" else []
        steps.append(
            _Step(
                f"CFG-RATE (measRate {self.meas_rate_ms} ms)",
                UBXMessage(
                    "CFG",
                    "CFG-RATE",
                    SET,
                    measRate=self.meas_rate_ms,
                    # navRate: fixed at 1 on u-blox 5 and 6 (CFG-RATE field description).
                    navRate=1,
                    timeRef=TIME_REF_GPS,
                ).serialize(),
                UBX_CLASS_CFG,
                CFG_IDS["CFG-RATE"],
            )
        )
        steps.append(
            _Step(
                f"CFG-NAV5 (dynModel {self.dyn_model})",
                # mask bit 0 "dyn": apply only dynModel, leave the other settings as they are.
                UBXMessage("CFG", "CFG-NAV5", SET, dyn=1, dynModel=self.dyn_model).serialize(),
                UBX_CLASS_CFG,
                CFG_IDS["CFG-NAV5"],
            )
        )
        rates = {NMEA_MSG_IDS[n]: 1 for n in self.nmea_on}
        rates.update({NMEA_MSG_IDS[n]: 0 for n in self.nmea_off})
        names = {v: k for k, v in NMEA_MSG_IDS.items()}
        messages = [
            (UBX_CLASS_NMEA, msg_id, f"NMEA {names[msg_id]}", rate)
            for msg_id, rate in rates.items()
        ]
        if self.ubx_nav:
            nav = ("NAV-PVT",) if version.has_nav_pvt else ("NAV-POSLLH", "NAV-SOL", "NAV-VELNED")
            messages += [(UBX_CLASS_NAV, NAV_MSG_IDS[n], n, 1) for n in nav]
        for msg_class, msg_id, name, rate in messages:
            steps.append(
                _Step(
                    f"CFG-MSG ({name} {'on' if rate else 'off'}, {self.port})",
                    # "Set Message Rate", 3 bytes: class, id, rate on the port it came in on
                    # (pyubx2 knows only the 8-byte form, hence the raw payload).
                    UBXMessage(
                        UBX_CLASS_CFG.to_bytes(1, "little"),
                        CFG_IDS["CFG-MSG"].to_bytes(1, "little"),
                        SET,
                        payload=bytes((msg_class, msg_id, rate)),
                    ).serialize(),
                    UBX_CLASS_CFG,
                    CFG_IDS["CFG-MSG"],
                )
            )
        if self.save:
            steps.append(
                _Step(
                    f"CFG-CFG (save to {' and '.join(self._saved_to())})",
                    # saveMask 0x1F1F: bits 0-4 (ioPort, msgConf, infMsg, navConf, rxmConf)
                    # and 8-12 (rinvConf, antConf, ...): every section of CFG-CFG.
                    UBXMessage(
                        "CFG",
                        "CFG-CFG",
                        SET,
                        saveMask=b"\x1f\x1f\x00\x00",
                        devBBR=1,
                        devEEPROM=int(self.eeprom),
                    ).serialize(),
                    UBX_CLASS_CFG,
                    CFG_IDS["CFG-CFG"],
                )
            )
        return steps

    def _saved_to(self) -> tuple[str, ...]:
        return ("BBR", "EEPROM") if self.eeprom else ("BBR",)

    def _port_step(self) -> _Step:
        return _Step(
            "CFG-PRT poll (the port in use)",
            UBXMessage("CFG", "CFG-PRT", POLL).serialize(),
            UBX_CLASS_CFG,
            CFG_IDS["CFG-PRT"],
            kind="port",
        )

    def _baud_error(self, polls: int) -> UbxBaudError:
        """Why the switch could not be verified, from what was seen (the caller's transport
        then no longer knows the receiver's rate: it has to detect it again)."""
        tried = f"{polls} polls at {self.baud} baud, {self.timeout:g} s each"
        if self._baud_acked:
            return UbxBaudError(
                f"CFG-PRT: the receiver acknowledged the switch to {self.baud} baud at"
                f" {self.current_baud} but never answered at {self.baud} ({tried}): the host"
                f" port may not run at {self.baud} baud, or the line loses bytes at that rate"
            )
        return UbxBaudError(
            f"CFG-PRT: no acknowledgement at {self.current_baud} baud and no answer at"
            f" {self.baud} ({tried}): the receiver may have refused {self.baud} baud and stayed"
            f" at {self.current_baud}, or switched on a line that loses bytes at {self.baud}"
        )

    def _prt_step(self) -> _Step:
        frame = UBXMessage(
            "CFG",
            "CFG-PRT",
            SET,
            portID=PORT_UART1,
            baudRate=self.baud,
            inUBX=1,
            inNMEA=1,
            outUBX=1,
            outNMEA=1,
            **_UART_MODE_8N1,
        ).serialize()
        kind = "prt" if self.baud != self.current_baud else "ack"
        return _Step(
            f"CFG-PRT (UART1 {self.baud} baud, UBX+NMEA)",
            frame,
            UBX_CLASS_CFG,
            CFG_IDS["CFG-PRT"],
            kind=kind,
        )

    def _ask_baud_switch(self) -> bytes:
        self._pending_baud = self.baud
        self._deadline = None
        return b""

    def _send(self, now: float) -> bytes:
        step = self._steps[0]
        step.sends += 1
        self._deadline = now + self.timeout
        return step.frame

    def _next(self, now: float) -> bytes:
        done = self._steps.pop(0)
        self._applied.append(done.what)
        if not self._steps:
            self._finished = True
            self._deadline = None
            return b""
        return self._send(now)

    def _fail(self, error: UbxConfigError) -> None:
        self._error = error
        self._finished = True
        self._deadline = None
        self._pending_baud = None


# -- baud-rate detection -----------------------------------------------------------------

_NMEA_RE = re.compile(rb"\$([A-Z]{2}[A-Z]{3}[\x20-\x29\x2b-\x7e]*)\*([0-9A-Fa-f]{2})\r?\n")


@dataclass(frozen=True)
class BaudScore:
    """How well the bytes read at one rate look like receiver output."""

    baud: int
    nmea: int  # NMEA sentences whose checksum (XOR of the chars between $ and *) is right
    ubx: int  # UBX frames with a correct Fletcher checksum (GPS.G6-SW-10018, "UBX Checksum")
    valid_bytes: int
    total_bytes: int

    @property
    def frames(self) -> int:
        return self.nmea + self.ubx


def _nmea_count(data: bytes) -> tuple[int, int]:
    count = covered = 0
    for match in _NMEA_RE.finditer(data):
        if nmea_checksum(match.group(1)) == int(match.group(2), 16):
            count += 1
            covered += len(match.group(0))
    return count, covered


def _ubx_count(data: bytes) -> tuple[int, int]:
    count = covered = 0
    pos = data.find(b"\xb5\x62")
    while pos >= 0 and pos + 8 <= len(data):
        (length,) = struct.unpack_from("<H", data, pos + 4)
        end = pos + 6 + length + 2
        if end <= len(data) and ubx_checksum(data[pos + 2 : end - 2]) == data[end - 2 : end]:
            count += 1
            covered += end - pos
            pos = data.find(b"\xb5\x62", end)
        else:
            pos = data.find(b"\xb5\x62", pos + 1)
    return count, covered


def score_baud_samples(samples: Mapping[int, bytes]) -> list[BaudScore]:
    """Score the bytes read at each candidate rate, best first.

    At the wrong rate a UART reads framing garbage: a checksummed sentence or frame there is
    vanishingly unlikely, so the count of valid ones decides, then the share of bytes they
    cover.
    """
    scores = []
    for baud, data in samples.items():
        nmea, nmea_bytes = _nmea_count(data)
        ubx, ubx_bytes = _ubx_count(data)
        scores.append(BaudScore(baud, nmea, ubx, nmea_bytes + ubx_bytes, len(data)))
    return sorted(
        scores,
        key=lambda s: (s.frames, s.valid_bytes / s.total_bytes if s.total_bytes else 0.0),
        reverse=True,
    )


def detect_baud(samples: Mapping[int, bytes], min_frames: int = 2) -> int | None:
    """The rate whose sample holds the most valid NMEA/UBX, or None if none holds
    `min_frames` (no receiver, not a GPS, or a sample too short to tell)."""
    scores = score_baud_samples(samples)
    if not scores or scores[0].frames < min_frames:
        return None
    return scores[0].baud


def candidate_bauds(first: int | None = None, rates: Iterable[int] = BAUD_RATES) -> list[int]:
    """The order to try rates in: the last known rate first, then the usual ones."""
    ordered = [first] if first else []
    return ordered + [r for r in rates if r != first]
