"""A sans-I/O u-blox NEO-6M: NMEA out at the configured rate, UBX configuration answered.

`Neo6m.tick(now, position_provider)` returns the NMEA of the fix cycles that are due;
`Neo6m.receive(data, now)` takes the bytes the host sent and returns the receiver's
answers. Nothing here touches a port or sleeps; `sim.gps.pty_runner` puts it on a pty.

Behaviour follows the u-blox 6 Receiver Description including Protocol Specification
(GPS.G6-SW-10018), cited at each rule, and what real NEO-6M boards print: the factory
output is RMC, VTG, GGA, GSA, GSV, GLL once a second at 9600 baud, talker GP. Faults
(`Faults`) are injected deterministically from `seed`.

Wiring and storage, as on the boards the NEO-6M is sold on:
- the host talks to UART1 (through the board's pins or a USB-serial bridge) or to the
  module's own USB port (`wiring="USB"`, a CDC-ACM device, where the line rate means
  nothing). Message rates are kept per port (CFG-MSG "Set Message Rates", six of them:
  DDC, UART1, UART2, USB, SPI, reserved), protocol masks per port (CFG-PRT), and the
  three-byte CFG-MSG "Set Message Rate" form applies to the port it came in on;
- the NEO-6M is a ROM part without flash: CFG-CFG can save to battery-backed RAM (kept over
  a power cycle only while the board's backup battery or supercap holds it) and to an I2C
  EEPROM where the board has one (`eeprom=True`). A deviceMask naming a device that is not
  there is acknowledged, and that device skipped (set-up code for NEO-6M modules commonly
  sends mask 0x17, every device, and waits for the ACK, as the Arduino playground's u-blox
  configuration does). At power-up the configuration comes from BBR if it holds one, else
  from the EEPROM, else the factory defaults;
- after CFG-PRT changes the UART rate, the receiver answers at the new rate (the CFG-PRT
  description warns that the host may have to change its rate "to be able to receive ...
  the acknowledge message resulting from the CFG-PRT message"); `prt_ack_after_switch=False`
  sends that ACK at the old rate first, the other behaviour the description allows.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

#: (lat_deg, lon_deg, alt_msl_m, ground_speed_mps, course_deg). A provider gets the
#: emulator time (seconds since the first `tick`) and returns one, or None: no position.
Position = tuple[float, float, float, float, float]
PositionProvider = Callable[[float], "Position | None"]

KNOTS_PER_MPS = 3600.0 / 1852.0
_EPSILON_S = 1e-6
EARTH_RADIUS_M = 6_371_000.0

#: Rates the NEO-6M UART accepts in CFG-PRT (GPS.G6-SW-10018, CFG-PRT / UART baudRate).
SUPPORTED_BAUDS = frozenset({4800, 9600, 19200, 38400, 57600, 115200, 230400})

#: NMEA output order in one fix cycle, as the receiver prints it, with the CFG-MSG ids.
NMEA_ORDER = (
    ("RMC", 0x04),
    ("VTG", 0x05),
    ("GGA", 0x00),
    ("GSA", 0x02),
    ("GSV", 0x03),
    ("GLL", 0x01),
    ("ZDA", 0x08),
)
#: Factory default: all but ZDA on, once per fix.
DEFAULT_NMEA_RATES = {0x00: 1, 0x01: 1, 0x02: 1, 0x03: 1, 0x04: 1, 0x05: 1, 0x08: 0}

#: Port ids (CFG-PRT portID; CFG-MSG rate index): DDC (I2C), UART1, UART2, USB, SPI.
PORT_DDC, PORT_UART1, PORT_UART2, PORT_USB, PORT_SPI = 0, 1, 2, 3, 4
WIRINGS = {"UART1": PORT_UART1, "USB": PORT_USB}
#: CFG-CFG deviceMask bits: devBBR, devFlash, devEEPROM, devSpiFlash (bit 3 reserved).
DEVICES = ((0, "BBR"), (1, "flash"), (2, "EEPROM"), (4, "SPI flash"))


def _factory_rates(rate: int) -> tuple[int, ...]:
    """One message's factory rates on the six ports: on DDC, UART1, USB and SPI (NEO-6 has
    no UART2)."""
    return (rate, rate, 0, rate, rate, 0)


#: UBX messages CFG-MSG accepts on a u-blox 6 (protocol 13): NMEA ones and NAV ones.
#: NAV-PVT (0x01 0x07) only exists from protocol 14 (u-blox 7), so a u-blox 6 NAKs it.
_UBX6_NAV_IDS = frozenset({0x01, 0x02, 0x03, 0x04, 0x06, 0x11, 0x12, 0x20, 0x21, 0x30})


@dataclass(frozen=True)
class MonVer:
    """What the receiver reports in MON-VER."""

    sw_version: str = "7.03 (45969)"
    hw_version: str = "00040007"
    extensions: tuple[str, ...] = ()
    #: Whether CFG-MSG accepts NAV-PVT (protocol >= 14).
    nav_pvt: bool = False


#: A genuine NEO-6M (u-blox 6, firmware 7.03: no extension strings).
UBLOX6 = MonVer()
#: A u-blox 7 (ROM CORE 1.00) as found on many boards sold as "NEO-6M".
UBLOX7 = MonVer("1.00 (59842)", "00070000", ("PROTVER 14.00", "GPS;SBAS;GLO;QZSS"), True)


@dataclass
class ReceiverConfig:
    """The settings UBX-CFG changes, and CFG-CFG saves; the defaults are the factory ones."""

    baud: int = 9600  # UART1
    meas_rate_ms: int = 1000
    time_ref: int = 1
    dyn_model: int = 0
    #: port -> (inProtoMask, outProtoMask), bit 0 UBX, bit 1 NMEA: both, on UART1 and USB.
    protocols: dict[int, tuple[int, int]] = field(
        default_factory=lambda: {PORT_UART1: (0x3, 0x3), PORT_USB: (0x3, 0x3)}
    )
    #: (class, id) -> output rates on the six ports, in navigation solutions (0 = off).
    msg_rates: dict[tuple[int, int], tuple[int, ...]] = field(
        default_factory=lambda: {
            (0xF0, i): _factory_rates(r) for i, r in DEFAULT_NMEA_RATES.items()
        }
    )

    def copy(self) -> ReceiverConfig:
        return replace(self, protocols=dict(self.protocols), msg_rates=dict(self.msg_rates))


@dataclass(frozen=True)
class Jump:
    """A position offset (spoofing) between `start` and `end` seconds of emulator time."""

    start: float
    end: float
    north_m: float
    east_m: float


@dataclass
class Faults:
    """Faults to inject; times are seconds since the first `tick` (emulator time).

    `checksum_every` corrupts every Nth sentence, `checksum_probability` each with that
    chance; `dropouts` are (start, end) intervals of total silence (no NMEA, no UBX
    answers); `no_fix` intervals report no fix (RMC status V, GGA quality 0, GSA mode 1);
    `two_d` intervals a 2-D fix (GSA mode 2, as with too few satellites for 3-D);
    `cold_start_s` is the time to first fix, during which no satellite is tracked;
    `jumps` shift the reported position.
    """

    checksum_every: int = 0
    checksum_probability: float = 0.0
    dropouts: tuple[tuple[float, float], ...] = ()
    no_fix: tuple[tuple[float, float], ...] = ()
    two_d: tuple[tuple[float, float], ...] = ()
    cold_start_s: float = 0.0
    jumps: tuple[Jump, ...] = ()


@dataclass
class Counters:
    """What the emulator did, for tests to check claims against."""

    epochs: int = 0
    sentences: int = 0
    corrupted: int = 0
    silent_epochs: int = 0
    no_fix_epochs: int = 0
    ubx_in: int = 0
    ubx_bad_checksum: int = 0
    acks: int = 0
    naks: int = 0


@dataclass(frozen=True)
class Satellite:
    """One satellite in view, as GSV lists it; `used` ones also appear in GSA."""

    prn: int
    elevation: int
    azimuth: int
    snr: int
    used: bool


#: A plausible sky: 11 GPS satellites in view, 8 used.
DEFAULT_SKY = (
    Satellite(2, 62, 287, 44, True),
    Satellite(5, 41, 51, 40, True),
    Satellite(6, 12, 318, 28, False),
    Satellite(12, 75, 112, 46, True),
    Satellite(13, 22, 183, 35, True),
    Satellite(15, 30, 240, 38, True),
    Satellite(18, 5, 20, 0, False),
    Satellite(21, 48, 92, 42, True),
    Satellite(24, 17, 270, 31, True),
    Satellite(25, 33, 150, 39, True),
    Satellite(29, 8, 350, 22, False),
)


def _snr_at(sat: Satellite, utc: datetime) -> int:
    """The satellite's C/N0 at `utc`: its nominal value wandering by up to 2 dB, changing
    once a second, as a tracked satellite's does on a real receiver (so consecutive GSV
    sentences are not all identical, which would flatter any decoder that caches them)."""
    second = utc.hour * 3600 + utc.minute * 60 + utc.second
    return max(1, min(99, sat.snr + round(2.0 * math.sin(0.37 * second + sat.prn))))


def nmea_sentence(body: str) -> bytes:
    """ "$" body "*" checksum CRLF; the checksum XORs every character between "$" and "*"
    (NMEA 0183, "Checksum field"). The emulator computes its checksums (NMEA and UBX) itself
    rather than with the driver's helpers, so that a mistake in one is caught by the other."""
    checksum = 0
    for char in body.encode("ascii"):
        checksum ^= char
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def ubx_frame(msg_class: int, msg_id: int, payload: bytes = b"") -> bytes:
    """A UBX frame: sync 0xB5 0x62, class, id, little-endian length, payload, and the 8-bit
    Fletcher checksum over class..payload (GPS.G6-SW-10018, "UBX Packet Structure")."""
    body = struct.pack("<BBH", msg_class, msg_id, len(payload)) + payload
    a = b = 0
    for byte in body:
        a = (a + byte) & 0xFF
        b = (b + a) & 0xFF
    return b"\xb5\x62" + body + bytes((a, b))


def _in(intervals: tuple[tuple[float, float], ...], t: float) -> bool:
    return any(start <= t < end for start, end in intervals)


def _lat(value: float) -> tuple[str, str]:
    deg = int(abs(value))
    return f"{deg:02d}{(abs(value) - deg) * 60:08.5f}", "N" if value >= 0 else "S"


def _lon(value: float) -> tuple[str, str]:
    deg = int(abs(value))
    return f"{deg:03d}{(abs(value) - deg) * 60:08.5f}", "E" if value >= 0 else "W"


#: What `sky` may be: a fixed sky, or one that changes with emulator time.
Sky = tuple[Satellite, ...] | Callable[[float], tuple[Satellite, ...]]


class Neo6m:
    """The emulated receiver.

    `baud` is the UART1 rate it talks at; a CFG-PRT that changes it takes effect before the
    ACK is returned, or, with `prt_ack_after_switch=False`, once the ACK is out (at the
    next `receive` or `tick`); a runner writes what `receive` returned at the rate in force
    after the call. What CFG-CFG saved survives `power_cycle()` as the module docstring
    says; the rest returns to the factory state (9600 baud, 1 Hz).

    UTC is `utc_start` at the first tick; or, with `utc_origin`, at that clock reading, so a
    receiver on a simulator's clock tells the same time as the simulated autopilot.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: Faults | None = None,
        mon_ver: MonVer = UBLOX6,
        baud: int = 9600,
        meas_rate_ms: int = 1000,
        utc_start: datetime = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc),
        geoid_sep_m: float = 47.0,
        sky: Sky = DEFAULT_SKY,
        utc_origin: float | None = None,
        wiring: str = "UART1",
        backup_battery: bool = True,
        eeprom: bool = False,
        prt_ack_after_switch: bool = True,
    ) -> None:
        if wiring not in WIRINGS:
            raise ValueError(f"wiring {wiring!r}: one of {', '.join(WIRINGS)}")
        self.faults = faults or Faults()
        self.mon_ver = mon_ver
        self.utc_start = utc_start
        self.utc_origin = utc_origin
        self.geoid_sep_m = geoid_sep_m
        self.sky = sky
        self.wiring = wiring
        self.port = WIRINGS[wiring]
        self.backup_battery = backup_battery
        self.eeprom = eeprom
        self.prt_ack_after_switch = prt_ack_after_switch
        self.counters = Counters()
        self._rng = random.Random(seed)
        self._factory = ReceiverConfig(baud=baud, meas_rate_ms=meas_rate_ms)
        self.config = self._factory.copy()
        #: What CFG-CFG saved, by device ("BBR", "EEPROM"): None when it holds nothing.
        self.stored: dict[str, ReceiverConfig | None] = {"BBR": None, "EEPROM": None}
        #: The devices the last CFG-CFG save wrote to.
        self.saved_to: set[str] = set()
        self._pending_baud: int | None = None  # a CFG-PRT rate waiting for its ACK to leave
        self._two_d = False  # the epoch being printed is a 2-D fix (Faults.two_d)
        self._t0: float | None = None
        self._next_epoch: float | None = None
        self._inbuf = bytearray()

    @property
    def baud(self) -> int:
        """The UART1 rate the receiver talks at now."""
        return self.config.baud

    @property
    def meas_rate_ms(self) -> int:
        return self.config.meas_rate_ms

    def power_cycle(self, *, backup: bool | None = None) -> None:
        """Power loss and return: configuration from BBR if the backup supply held it
        (`backup`, by default whether the board has a backup battery), else from the
        EEPROM, else the factory's; first fix again."""
        if not (self.backup_battery if backup is None else backup):
            self.stored["BBR"] = None
        saved = self.stored["BBR"] or self.stored["EEPROM"] or self._factory
        self.config = saved.copy()
        self._pending_baud = None
        self._t0 = None
        self._next_epoch = None
        self._inbuf.clear()

    @property
    def rate_hz(self) -> float:
        """Navigation solutions per second (CFG-RATE measRate; navRate is always 1)."""
        return 1000.0 / self.meas_rate_ms

    def enabled(self, name: str) -> bool:
        """Whether NMEA sentence `name` (e.g. "GLL") is output on the port the host is on."""
        return self.output_rate(name) > 0

    def output_rate(self, name: str, port: int | None = None) -> int:
        """The CFG-MSG rate of NMEA sentence `name` on `port` (default: the host's)."""
        rates = self.config.msg_rates.get((0xF0, dict(NMEA_ORDER)[name]), (0,) * 6)
        return rates[self.port if port is None else port]

    def _apply_pending_baud(self) -> None:
        if self._pending_baud is not None:
            self.config.baud, self._pending_baud = self._pending_baud, None

    # -- output --

    def elapsed(self, now: float) -> float:
        """Emulator time: seconds since the first `tick`."""
        return 0.0 if self._t0 is None else now - self._t0

    def tick(self, now: float, position_provider: PositionProvider) -> bytes:
        """The NMEA of the fix cycle due by `now`, b"" if none is. A late call gets only the
        latest cycle: the missed ones belong to the past, and a burst of stale epochs would
        not be what a receiver on a wire looks like."""
        self._apply_pending_baud()
        if self._t0 is None:
            self._t0 = now
            self._next_epoch = now
        assert self._next_epoch is not None
        # Epoch times are kept to the microsecond so that float sums (0.2 + 0.2 + ...) never
        # push a due epoch a hair past the clock reading that should emit it.
        if now + _EPSILON_S < self._next_epoch:
            return b""
        period = self.meas_rate_ms / 1000.0
        epoch_time = self._next_epoch
        missed = math.floor((now - self._next_epoch) / period + _EPSILON_S)
        epoch_time = round(epoch_time + missed * period, 6)
        self._next_epoch = round(epoch_time + period, 6)
        return self._epoch(epoch_time, position_provider)

    def _epoch(self, now: float, position_provider: PositionProvider) -> bytes:
        t = now - (self._t0 or 0.0)
        self.counters.epochs += 1
        if _in(self.faults.dropouts, t):
            self.counters.silent_epochs += 1
            return b""
        if not self.config.protocols[self.port][1] & 0x2:  # outProtoMask bit 1: NMEA
            return b""
        since = t if self.utc_origin is None else now - self.utc_origin
        utc = self.utc_start + timedelta(seconds=round(since, 3))
        cold = t < self.faults.cold_start_s
        position = None if cold or _in(self.faults.no_fix, t) else position_provider(t)
        if position is not None:
            position = self._spoofed(position, t)
        else:
            self.counters.no_fix_epochs += 1
        sky = () if cold else self.sky(t) if callable(self.sky) else self.sky
        self._two_d = _in(self.faults.two_d, t)
        out = bytearray()
        for name, msg_id in NMEA_ORDER:
            rate = self.config.msg_rates.get((0xF0, msg_id), (0,) * 6)[self.port]
            # CFG-MSG rate: "send rate is relative to the event a message is registered on",
            # i.e. once every `rate` navigation solutions.
            if rate <= 0 or (self.counters.epochs - 1) % rate:
                continue
            for body in getattr(self, f"_{name.lower()}")(utc, position, sky):
                out += self._emit(body)
        return bytes(out)

    def _spoofed(self, position: Position, t: float) -> Position:
        lat, lon, alt, speed, course = position
        for jump in self.faults.jumps:
            if jump.start <= t < jump.end:
                lat += math.degrees(jump.north_m / EARTH_RADIUS_M)
                lon += math.degrees(jump.east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
        return lat, lon, alt, speed, course

    def _emit(self, body: str) -> bytes:
        sentence = nmea_sentence(body)
        self.counters.sentences += 1
        faults = self.faults
        corrupt = (
            faults.checksum_every and self.counters.sentences % faults.checksum_every == 0
        ) or (faults.checksum_probability and self._rng.random() < faults.checksum_probability)
        if corrupt:
            self.counters.corrupted += 1
            good = sentence[-4:-2]
            bad = f"{int(good, 16) ^ 0x5A:02X}".encode()
            sentence = sentence[:-4] + bad + b"\r\n"
        return sentence

    # Sentence formats as the NEO-6M prints them (GPS.G6-SW-10018, "NMEA Messages").

    def _rmc(self, utc: datetime, pos: Position | None, sky: tuple[Satellite, ...]) -> list[str]:
        time_s = utc.strftime("%H%M%S.") + f"{utc.microsecond // 10000:02d}"
        date_s = utc.strftime("%d%m%y")
        if pos is None:
            return [f"GPRMC,{time_s},V,,,,,,,{date_s},,,N"]
        lat, ns = _lat(pos[0])
        lon, ew = _lon(pos[1])
        knots = pos[3] * KNOTS_PER_MPS
        return [f"GPRMC,{time_s},A,{lat},{ns},{lon},{ew},{knots:.3f},{pos[4]:.2f},{date_s},,,A"]

    def _vtg(self, utc: datetime, pos: Position | None, sky: tuple[Satellite, ...]) -> list[str]:
        if pos is None:
            return ["GPVTG,,,,,,,,,N"]
        knots = pos[3] * KNOTS_PER_MPS
        return [f"GPVTG,{pos[4]:.2f},T,,M,{knots:.3f},N,{pos[3] * 3.6:.3f},K,A"]

    def _gga(self, utc: datetime, pos: Position | None, sky: tuple[Satellite, ...]) -> list[str]:
        time_s = utc.strftime("%H%M%S.") + f"{utc.microsecond // 10000:02d}"
        if pos is None:
            return [f"GPGGA,{time_s},,,,,0,{0:02d},99.99,,,,,,"]
        lat, ns = _lat(pos[0])
        lon, ew = _lon(pos[1])
        used = sum(1 for s in sky if s.used)
        return [
            f"GPGGA,{time_s},{lat},{ns},{lon},{ew},1,{used:02d},0.92,{pos[2]:.1f},M,"
            f"{self.geoid_sep_m:.1f},M,,"
        ]

    def _gsa(self, utc: datetime, pos: Position | None, sky: tuple[Satellite, ...]) -> list[str]:
        if pos is None:
            return ["GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"]
        prns = [f"{s.prn:02d}" for s in sky if s.used][:12]
        prns += [""] * (12 - len(prns))
        mode = 2 if self._two_d else 3
        return [f"GPGSA,A,{mode},{','.join(prns)},1.65,0.92,1.37"]

    def _gsv(self, utc: datetime, pos: Position | None, sky: tuple[Satellite, ...]) -> list[str]:
        # Four satellites per sentence; "total number of messages" and "message number"
        # first, then satellites in view (NMEA 0183 GSV).
        total = max(1, math.ceil(len(sky) / 4))
        out = []
        for index in range(total):
            fields = [f"GPGSV,{total},{index + 1},{len(sky):02d}"]
            for sat in sky[index * 4 : index * 4 + 4]:
                snr = f"{_snr_at(sat, utc):02d}" if sat.snr else ""
                fields.append(f"{sat.prn:02d},{sat.elevation:02d},{sat.azimuth:03d},{snr}")
            out.append(",".join(fields))
        return out

    def _gll(self, utc: datetime, pos: Position | None, sky: tuple[Satellite, ...]) -> list[str]:
        time_s = utc.strftime("%H%M%S.") + f"{utc.microsecond // 10000:02d}"
        if pos is None:
            return [f"GPGLL,,,,,{time_s},V,N"]
        lat, ns = _lat(pos[0])
        lon, ew = _lon(pos[1])
        return [f"GPGLL,{lat},{ns},{lon},{ew},{time_s},A,A"]

    def _zda(self, utc: datetime, pos: Position | None, sky: tuple[Satellite, ...]) -> list[str]:
        time_s = utc.strftime("%H%M%S.") + f"{utc.microsecond // 10000:02d}"
        return [f"GPZDA,{time_s},{utc.day:02d},{utc.month:02d},{utc.year:04d},00,00"]

    # -- UBX input --

    def receive(self, data: bytes, now: float) -> bytes:
        """Take bytes from the host; returns the receiver's UBX answers.

        Frames with a bad checksum are dropped silently, as the receiver does; NMEA input
        and garbage are skipped. The buffer keeps at most one maximal frame's worth.
        """
        self._apply_pending_baud()
        if self._t0 is not None and _in(self.faults.dropouts, now - self._t0):
            return b""
        self._inbuf += data
        out = bytearray()
        while True:
            start = self._inbuf.find(b"\xb5\x62")
            if start < 0:
                del self._inbuf[: max(0, len(self._inbuf) - 1)]
                break
            del self._inbuf[:start]
            if len(self._inbuf) < 8:
                break
            msg_class, msg_id, length = struct.unpack_from("<BBH", self._inbuf, 2)
            if length > 1024:  # no input message is this long: a false sync, skip it
                del self._inbuf[:2]
                continue
            if len(self._inbuf) < 8 + length:
                break
            frame = bytes(self._inbuf[: 8 + length])
            del self._inbuf[: 8 + length]
            if ubx_frame(msg_class, msg_id, frame[6:-2]) != frame:
                self.counters.ubx_bad_checksum += 1
                continue
            self.counters.ubx_in += 1
            if self.config.protocols[self.port][0] & 0x1:  # inProtoMask bit 0: UBX input
                out += self._on_ubx(msg_class, msg_id, frame[6:-2])
        return bytes(out)

    def _ack(self, msg_class: int, msg_id: int, ok: bool) -> bytes:
        # ACK-ACK (0x05 0x01) / ACK-NAK (0x05 0x00), payload clsID, msgID (UBX-ACK).
        if ok:
            self.counters.acks += 1
        else:
            self.counters.naks += 1
        return ubx_frame(0x05, 0x01 if ok else 0x00, bytes((msg_class, msg_id)))

    def _on_ubx(self, msg_class: int, msg_id: int, payload: bytes) -> bytes:
        if (msg_class, msg_id) == (0x0A, 0x04) and not payload:
            return self._mon_ver()
        if msg_class != 0x06:
            return b""  # polls of what we do not emulate go unanswered
        handler = {
            0x00: self._cfg_prt,
            0x01: self._cfg_msg,
            0x08: self._cfg_rate,
            0x09: self._cfg_cfg,
            0x24: self._cfg_nav5,
        }.get(msg_id)
        if handler is None:
            return self._ack(msg_class, msg_id, False)
        return handler(payload)

    def _mon_ver(self) -> bytes:
        version = self.mon_ver
        payload = version.sw_version.encode().ljust(30, b"\0") + version.hw_version.encode().ljust(
            10, b"\0"
        )
        for ext in version.extensions:
            payload += ext.encode().ljust(30, b"\0")
        return ubx_frame(0x0A, 0x04, payload)

    def _prt_payload(self, port: int) -> bytes:
        """CFG-PRT as polled: the UART layout (mode 8N1, baud rate) or the USB one, whose
        mode and baud fields are reserved (zero)."""
        in_mask, out_mask = self.config.protocols[port]
        mode, baud = (0x08D0, self.baud) if port == PORT_UART1 else (0, 0)
        return struct.pack("<BBHIIHHHH", port, 0, 0, mode, baud, in_mask, out_mask, 0, 0)

    def _cfg_prt(self, payload: bytes) -> bytes:
        if len(payload) in (0, 1):  # poll: the port the poll came in on, or the port named
            port = payload[0] if payload else self.port
            if port not in self.config.protocols:
                return self._ack(0x06, 0x00, False)
            return ubx_frame(0x06, 0x00, self._prt_payload(port))
        if len(payload) != 20:
            return self._ack(0x06, 0x00, False)
        port, _, _, mode, baud, in_mask, out_mask, _, _ = struct.unpack("<BBHIIHHHH", payload)
        if port in (PORT_DDC, PORT_SPI):  # exist, but not emulated: accepted
            return self._ack(0x06, 0x00, True)
        if port == PORT_USB:
            self.config.protocols[port] = (in_mask, out_mask)
            return self._ack(0x06, 0x00, True)
        if port != PORT_UART1 or baud not in SUPPORTED_BAUDS or (mode >> 6) & 0x3 != 3:
            return self._ack(0x06, 0x00, False)  # no UART2 on NEO-6; only 8-bit characters
        self.config.protocols[port] = (in_mask, out_mask)
        if self.prt_ack_after_switch:
            self.config.baud = baud  # the ACK then goes out at the new rate
        else:
            self._pending_baud = baud  # switched once the ACK is out, at the old rate
        return self._ack(0x06, 0x00, True)

    def _cfg_rate(self, payload: bytes) -> bytes:
        if not payload:
            return ubx_frame(
                0x06, 0x08, struct.pack("<HHH", self.meas_rate_ms, 1, self.config.time_ref)
            )
        if len(payload) != 6:
            return self._ack(0x06, 0x08, False)
        meas, nav, ref = struct.unpack("<HHH", payload)
        # u-blox 6: at most 5 Hz; navRate fixed at 1; timeRef 0 or 1.
        if meas < 200 or nav != 1 or ref not in (0, 1):
            return self._ack(0x06, 0x08, False)
        if self._next_epoch is not None:
            # The new period runs from the last solution, not from the next one the old
            # period had scheduled: at 1 Hz -> 5 Hz, 5 Hz output follows within 200 ms.
            last = self._next_epoch - self.config.meas_rate_ms / 1000.0
            self._next_epoch = round(last + meas / 1000.0, 6)
        self.config.meas_rate_ms, self.config.time_ref = meas, ref
        return self._ack(0x06, 0x08, True)

    def _cfg_nav5(self, payload: bytes) -> bytes:
        if not payload:
            return ubx_frame(
                0x06, 0x24, struct.pack("<HBB", 0xFFFF, self.config.dyn_model, 3).ljust(36, b"\0")
            )
        if len(payload) != 36:
            return self._ack(0x06, 0x24, False)
        mask, dyn_model = struct.unpack_from("<HB", payload)
        if mask & 0x1:
            # dynModel 0 portable, 2 stationary, 3 pedestrian, 4 automotive, 5 sea,
            # 6/7/8 airborne <1g/<2g/<4g (CFG-NAV5); 1 is not defined.
            if dyn_model not in (0, 2, 3, 4, 5, 6, 7, 8):
                return self._ack(0x06, 0x24, False)
            self.config.dyn_model = dyn_model
        return self._ack(0x06, 0x24, True)

    def _cfg_msg(self, payload: bytes) -> bytes:
        if len(payload) < 2:
            return self._ack(0x06, 0x01, False)
        key = (payload[0], payload[1])
        known = (key[0] == 0xF0 and key[1] in DEFAULT_NMEA_RATES) or (
            key[0] == 0x01
            and (key[1] in _UBX6_NAV_IDS or (key[1] == 0x07 and self.mon_ver.nav_pvt))
        )
        if not known:
            return self._ack(0x06, 0x01, False)
        rates = self.config.msg_rates.get(key, (0,) * 6)
        if len(payload) == 2:  # poll: the rates on all six ports
            return ubx_frame(0x06, 0x01, bytes((*key, *rates)))
        if len(payload) == 3:  # "Set Message Rate": on the port the message came in on
            rates = (*rates[: self.port], payload[2], *rates[self.port + 1 :])
        elif len(payload) == 8:  # "Set Message Rates": DDC, UART1, UART2, USB, SPI, reserved
            rates = tuple(payload[2:8])
        else:
            return self._ack(0x06, 0x01, False)
        self.config.msg_rates[key] = rates
        return self._ack(0x06, 0x01, True)

    def _cfg_cfg(self, payload: bytes) -> bytes:
        if len(payload) not in (12, 13):
            return self._ack(0x06, 0x09, False)
        clear, save, load = struct.unpack_from("<III", payload)
        # Without a deviceMask: BBR, flash and EEPROM (as u-blox describes the default).
        mask = payload[12] if len(payload) == 13 else 0x07
        named = {name for bit, name in DEVICES if mask >> bit & 1}
        # Only BBR and, where fitted, the EEPROM exist on a NEO-6M board: no flash.
        devices = named & ({"BBR", "EEPROM"} if self.eeprom else {"BBR"})
        # CFG-CFG executes clear, then save, then load. Sections are all or nothing here:
        # any mask bit stands for the whole configuration.
        if clear:
            for device in devices:
                self.stored[device] = None  # back to the defaults
        if save:
            for device in devices:
                self.stored[device] = self.config.copy()
            self.saved_to = devices
        ack = self._ack(0x06, 0x09, True)
        if load:
            # After the ACK, which goes out with the configuration in force before.
            loaded = next((self.stored[d] for d in ("BBR", "EEPROM") if d in devices), None)
            self.config = (loaded or self._factory).copy()
        return ack
