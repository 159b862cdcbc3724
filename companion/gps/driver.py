"""The NEO-6M on its serial port: the thin I/O adapter around the sans-I/O cores.

One thread owns the port. It finds the receiver's rate (`detect_baud` over samples at each
standard rate, the last known first), configures it over UBX (`UbxConfigurator`: rate,
dynamic model, sentences, baud, saving), feeds every byte to `NmeaUbxStream` and every
sentence to `EpochAssembler`, and publishes each `GpsFix` plus `GpsStatus` changes on the
bus.

Detection and configuration run again whenever the stream stops making sense, because a
receiver that lost power comes back with whatever it saved (often nothing: 9600 baud,
1 Hz, the factory sentences) while the host still talks at the rate it set:

- on every (re)open of the port: a USB replug is a power cycle;
- when bytes keep coming but nothing decodes for `silence_s` (the receiver restarted at
  another rate, on a UART that never closed);
- when bytes come back after a silence (it may have restarted at the same rate);
- when a sentence that configuration turned off appears (it restarted without its saved
  configuration, at the rate we happen to use);
- after a configuration that failed for a reason other than a NAK, up to
  `MAX_CONFIG_ATTEMPTS` in a row (a NAK will not change by asking again): the receiver is
  then read as it is, and the status says so.

It never dies: a vanished device (USB unplug, `/dev/ttyUSB0` gone) is reopened by path with
backoff, keeping the decoder's counters; any other error, a bug included, is logged with its
traceback, published as an `error` status naming it, and the port reopened. A silent
receiver's open epoch is flushed rather than held until it speaks again. Writes have a
timeout (`write_timeout`), so a port that stops draining (hardware flow control, a stuck
adapter) costs a counted, logged timeout instead of the thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from companion.gps.epoch import EpochAssembler
from companion.gps.fix import GpsFix
from companion.gps.stream import TALKERS, NmeaUbxStream, StreamStats, UbxFrame, UbxParseError
from companion.gps.ubx_config import (
    BAUD_RATES,
    UbxConfigError,
    UbxConfigResult,
    UbxConfigurator,
    UbxNak,
    candidate_bauds,
    detect_baud,
)
from companion.serial_errors import serial_cause

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.05
#: A UBX request is at most a few dozen bytes: 30 ms at 9600 baud. A write that has not gone
#: out in a second will not: the port is not draining.
WRITE_TIMEOUT_S = 1.0
_REOPEN_BACKOFF_S = (0.2, 0.5, 1.0)
#: Longest sample taken at each candidate rate (a 1 Hz receiver prints a burst a second);
#: sampling stops as soon as the rate is certain.
_PROBE_S = 1.2
#: Configuration attempts in a row before the receiver is read as it is.
MAX_CONFIG_ATTEMPTS = 3
_ERROR_PAUSE_S = 1.0

#: `GpsStatus.state` values, in the order a start-up passes through them.
STATES = (
    "detecting",  # looking for the receiver's rate
    "configuring",  # found; UBX configuration running
    "configured",  # configuration done (the detail says how, and where it was saved)
    "ok",  # valid fixes
    "no-fix",  # the receiver talks but has no (measured) position fix
    "silent",  # the port is open but nothing arrives
    "not-a-gps",  # bytes arrive, but no NMEA or UBX at any standard rate
    "config-failed",  # the receiver did not take its configuration
    "disconnected",  # the port cannot be opened, or vanished
    "error",  # anything else, named; the port is reopened
)


@dataclass(frozen=True)
class GpsStatus:
    """A change in the receiver's condition, one of `STATES`; `detail` names the port and
    the cause."""

    port: str
    state: str
    detail: str
    at: float


class GpsDriver:
    """Reads a u-blox receiver on `port` and publishes `GpsFix` and `GpsStatus`."""

    def __init__(
        self,
        port: str,
        publish: Callable[[object], None],
        *,
        baud: int = 9600,
        configurator: Callable[[int], UbxConfigurator] | None = None,
        silence_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baud = baud
        self.publish = publish
        self.silence_s = silence_s
        self.clock = clock
        self.stream = NmeaUbxStream()
        self.assembler = EpochAssembler()
        #: The last configuration that succeeded (kept across reconnects, for reports).
        self.config_result: UbxConfigResult | None = None
        self.write_timeouts = 0
        self.ubx_parse_errors = 0
        self._make_configurator = configurator
        self._configurator: UbxConfigurator | None = None
        self._configured = False  # on the current connection
        self._config_failures = 0  # in a row, on the current connection
        # "$GPGLL," and the like for each sentence type configuration turned off
        self._disabled: tuple[bytes, ...] = ()
        self._serial: serial.Serial | None = None
        self._state = ""
        self._need: str | None = None  # "detect" or "configure": what the link needs next
        self._undetected = False  # the last detection found no receiver
        self._silent = False
        self._last_byte = self._last_frame = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> StreamStats:
        """The decoder's counters (kept across reconnects)."""
        return self.stream.stats

    def start(self) -> GpsDriver:
        """Run the reader thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"gps {self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close the port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self._close()

    @property
    def running(self) -> bool:
        """Whether the reader thread runs (it survives its own errors; this is for the
        daemon's supervisor, which restarts a driver whose thread died anyway)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def settled(self) -> bool:
        """True once the receiver streams at its final settings: configured over UBX on this
        connection, or nothing to configure (until then its baud rate and output rate may
        still change)."""
        return self._make_configurator is None or self._configured

    def __enter__(self) -> GpsDriver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = iter(_REOPEN_BACKOFF_S)
        while not self._stop.is_set():
            try:
                if self._serial is None:
                    if not self._open():
                        self._stop.wait(next(backoff, _REOPEN_BACKOFF_S[-1]))
                        continue
                    backoff = iter(_REOPEN_BACKOFF_S)
                if self._need == "detect":
                    self._detect()
                elif self._need == "configure":
                    self._configure()
                else:
                    self._step()
            except (serial.SerialException, OSError) as exc:
                self._lost("disconnected", f"{self.port}: {serial_cause(exc)}")
            except Exception as exc:  # a bug here or in a library must not end the thread
                log.exception("%s: GPS driver error", self.port)
                self._lost(
                    "error",
                    f"{self.port}: internal error, {type(exc).__name__}: {exc}; reopening the port",
                )
                self._stop.wait(_ERROR_PAUSE_S)

    def _open(self) -> bool:
        try:
            self._serial = serial.Serial(
                self.port,
                self.baud,
                timeout=_READ_TIMEOUT_S,
                write_timeout=WRITE_TIMEOUT_S,
                exclusive=True,
            )
        except (serial.SerialException, OSError) as exc:
            self._status("disconnected", f"cannot open {self.port}: {serial_cause(exc)}")
            return False
        # Whatever happened while the port was closed (a USB replug is a power cycle), the
        # receiver's rate and configuration are not known any more.
        self._config_failures = 0
        self._undetected = False
        self._need = "detect"
        return True

    def _detect(self) -> None:
        """Find the rate the receiver talks at: the current one first, then the others."""
        assert self._serial is not None
        self._need = None
        self._configurator = None
        self._configured = False
        if not self._undetected:  # retries after a failed detection stay quiet
            self._status(
                "detecting", f"{self.port}: looking for the receiver, {self.baud} baud first"
            )
        heard = 0
        for rate in candidate_bauds(self.baud):
            if self._stop.is_set():
                return
            self._serial.baudrate = rate
            self._serial.reset_input_buffer()
            sample = self._sample()
            heard += len(sample)
            if detect_baud({rate: sample}) is not None:
                if rate != self.baud:
                    log.info("%s: receiver found at %d baud", self.port, rate)
                self.baud = rate
                self._undetected = False
                self._heard(self.clock())
                if self._make_configurator is not None:
                    if self._config_failures < MAX_CONFIG_ATTEMPTS:
                        self._need = "configure"
                else:
                    self._configured = True
                return
        self._serial.baudrate = self.baud
        self._undetected = True
        rates = ", ".join(map(str, BAUD_RATES))
        if heard:
            self._status(
                "not-a-gps",
                f"{self.port}: no NMEA or UBX at any of {rates} baud (not a GPS receiver?)",
            )
        else:
            self._status(
                "silent",
                f"{self.port}: no data at any of {rates} baud (receiver not powered, or its"
                " TX line not wired?)",
            )
            self._silent = True
        self._heard(self.clock())  # try again once the stream has made no sense for a while

    def _sample(self) -> bytes:
        """What arrives at the port's current rate within `_PROBE_S`, cut short as soon as
        it holds enough checksummed frames to be sure of the rate."""
        assert self._serial is not None
        end = self.clock() + _PROBE_S
        data = bytearray()
        while self.clock() < end and not self._stop.is_set():
            chunk = self._serial.read(4096)
            if chunk:
                data += chunk
                if detect_baud({0: bytes(data)}) is not None:
                    break
        return bytes(data)

    def _configure(self) -> None:
        assert self._make_configurator is not None
        self._need = None
        self._status(
            "configuring", f"{self.port}: receiver at {self.baud} baud; configuring it over UBX"
        )
        self._configurator = self._make_configurator(self.baud)
        self._write(self._configurator.start(self.clock()))

    def _step(self) -> None:
        assert self._serial is not None
        # Wait for the first byte only, then take what has arrived: a fixed-size read would
        # hold a complete epoch back until its timeout, ageing every fix by as much.
        data = self._serial.read(self._serial.in_waiting or 1)
        if data:
            data += self._serial.read(self._serial.in_waiting)
        now = self.clock()
        if data:
            if self._silent:
                # Back after a silence: perhaps restarted, at any rate, with any settings.
                self._silent = False
                self._need = "detect"
                return
            self._last_byte = now
            if self._take(data, now):
                self._last_frame = now
        self._check_health(now)
        self._drive_configurator(now)

    def _check_health(self, now: float) -> None:
        if now - self._last_byte > self.silence_s:
            if not self._silent:
                self._silent = True
                for fix in self.assembler.flush():
                    self._publish_fix(fix)
                self._status("silent", f"{self.port}: no data for {now - self._last_byte:.1f} s")
        elif now - self._last_frame > self.silence_s and self._configurator is None:
            # Bytes, but nothing that decodes: the receiver talks at another rate now.
            log.warning("%s: no NMEA or UBX for %.1f s", self.port, now - self._last_frame)
            self._need = "detect"

    def _heard(self, now: float) -> None:
        """Start the silence and no-sense timers afresh."""
        self._last_byte = self._last_frame = now

    def _take(self, data: bytes, now: float) -> int:
        """Decode `data`; returns how many sentences and UBX frames it held."""
        before = self.stats.sentences
        fixes, events = self.assembler.decode(self.stream, data, now)
        if self._configured and any(tag in data for tag in self._disabled):
            # A sentence configuration turned off: the receiver restarted without it. (A
            # tag split between two reads is caught in the next cycle's.)
            log.warning(
                "%s: a sentence configuration turned off is back: the receiver restarted", self.port
            )
            self._configured = False
            self._need = "detect"
        for fix in fixes:
            self._publish_fix(fix)
        frames = self.stats.sentences - before
        for event in events:
            if isinstance(event, UbxFrame):
                frames += 1
                if self._configurator is not None:
                    try:
                        msg = event.msg
                    except UbxParseError as exc:
                        self.ubx_parse_errors += 1
                        log.warning("%s: %s", self.port, exc)
                        continue
                    self._write(self._configurator.receive(msg, now))
        return frames

    def _publish_fix(self, fix: GpsFix) -> None:
        self.publish(fix)
        if fix.valid:
            self._status("ok", f"{self.port}: {fix.mode}-D fix, {fix.sats_used} satellites")
        elif fix.dead_reckoning:
            self._status("no-fix", f"{self.port}: dead reckoning only, no measured fix")
        else:
            self._status("no-fix", f"{self.port}: receiver reports no position fix")

    def _drive_configurator(self, now: float) -> None:
        cfg = self._configurator
        if cfg is None:
            return
        if cfg.pending_baud is not None:
            assert self._serial is not None
            # Decode what arrived at the old rate (an ACK may be in it), then switch and
            # drop what the port held: from here on, what is fed arrived at the new rate,
            # which is what lets the configurator take a frame as proof of it.
            rest = self._serial.read(self._serial.in_waiting)
            if rest:
                self._take(rest, now)
            if cfg.pending_baud is not None:
                self._serial.baudrate = cfg.pending_baud
                self._serial.reset_input_buffer()
                self.baud = cfg.pending_baud
                self._write(cfg.baud_changed(now))
        elif cfg.deadline is not None and now >= cfg.deadline:
            self._write(cfg.tick(now))
        if cfg.finished:
            self._configured_by(cfg, now)

    def _configured_by(self, cfg: UbxConfigurator, now: float) -> None:
        self._configurator = None
        self._heard(now)
        try:
            result = cfg.result()
        except UbxConfigError as exc:
            self._config_failures += 1
            if isinstance(exc, UbxNak):
                self._config_failures = MAX_CONFIG_ATTEMPTS  # asking again will not help
            if self._config_failures >= MAX_CONFIG_ATTEMPTS:
                then = "giving up until the port is reopened; reading the receiver as it is"
            else:
                then = "looking for the receiver again"
                self._need = "detect"  # its rate is not certain any more
            self._status("config-failed", f"{self.port}: {exc}; {then}")
            return
        self.config_result = result
        self.baud = result.baud
        self._configured = True
        self._config_failures = 0
        self._disabled = tuple(
            f"${talker}{kind},".encode() for talker in TALKERS for kind in cfg.nmea_off
        )
        self._status("configured", f"{self.port}: {result.describe()}")

    def _write(self, data: bytes) -> None:
        if not data or self._serial is None:
            return
        try:
            self._serial.write(data)
        except serial.SerialTimeoutException:
            # Not a vanished device (that raises on read too): the port does not drain.
            self.write_timeouts += 1
            log.warning(
                "%s: write of %d bytes timed out after %.1f s (the port is not draining:"
                " flow control, or a stuck adapter?)",
                self.port,
                len(data),
                WRITE_TIMEOUT_S,
            )

    def _lost(self, state: str, detail: str) -> None:
        """The connection ended: publish the open epoch and why, close the port."""
        self._close()
        self._configurator = None
        self._configured = False
        self._need = None
        self._silent = False
        for fix in self.assembler.flush():
            self._publish_fix(fix)
        self._status(state, detail)

    def _close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def _status(self, state: str, detail: str) -> None:
        if state == self._state:
            return
        self._state = state
        level = (
            logging.INFO
            if state in ("ok", "detecting", "configuring", "configured")
            else (logging.WARNING)
        )
        log.log(level, "%s", detail)
        self.publish(GpsStatus(self.port, state, detail, self.clock()))
