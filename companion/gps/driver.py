"""The NEO-6M on its serial port: the thin I/O adapter around the sans-I/O cores.

One thread owns the port. It configures the receiver over UBX at start-up (`UbxConfigurator`:
rate, dynamic model, sentences, baud), feeds every byte to `NmeaUbxStream` and every
sentence to `EpochAssembler`, and publishes each `GpsFix` plus `GpsStatus` changes on the
bus. It never dies of its port: a vanished device (USB unplug, `/dev/ttyUSB0` gone) is
reopened by path with backoff, keeping the decoder's counters and the assembler's state;
silence (no bytes for `silence_s`) and loss of fix are published as statuses. Errors name
the port and the cause: permission, missing device, a device that speaks no NMEA or UBX at
any standard rate.
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
from companion.gps.stream import NmeaUbxStream, Sentence, StreamStats, UbxFrame
from companion.gps.ubx_config import (
    BAUD_RATES,
    UbxConfigError,
    UbxConfigResult,
    UbxConfigurator,
    candidate_bauds,
    detect_baud,
)
from companion.serial_errors import serial_cause

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.05
_REOPEN_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
_PROBE_S = 1.2  # bytes sampled at each candidate rate when detecting the baud


@dataclass(frozen=True)
class GpsStatus:
    """A change in the receiver's condition: ok, no-fix, silent, disconnected, not-a-gps,
    config-failed; `detail` names the port and the cause."""

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
        self.config_result: UbxConfigResult | None = None
        self._make_configurator = configurator
        self._configurator: UbxConfigurator | None = None
        self._serial: serial.Serial | None = None
        self._state = ""
        self._valid = False
        self._last_byte = clock()
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
    def settled(self) -> bool:
        """True once the receiver streams at its final settings: configured over UBX, or
        nothing to configure (until then its baud rate and output rate may still change)."""
        return self._make_configurator is None or self.config_result is not None

    def __enter__(self) -> GpsDriver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = iter(_REOPEN_BACKOFF_S)
        while not self._stop.is_set():
            if self._serial is None:
                if not self._open():
                    self._stop.wait(next(backoff, _REOPEN_BACKOFF_S[-1]))
                    continue
                backoff = iter(_REOPEN_BACKOFF_S)
            try:
                self._step()
            except (serial.SerialException, OSError) as exc:
                self._status("disconnected", f"{self.port}: {serial_cause(exc)}")
                self._close()

    def _open(self) -> bool:
        try:
            self._serial = serial.Serial(
                self.port, self.baud, timeout=_READ_TIMEOUT_S, exclusive=True
            )
        except (serial.SerialException, OSError) as exc:
            self._status("disconnected", f"cannot open {self.port}: {serial_cause(exc)}")
            return False
        self._last_byte = self.clock()
        if self._make_configurator is not None and self.config_result is None:
            if not self._find_baud():
                return True  # keep reading: the status says why nothing makes sense
            self._configurator = self._make_configurator(self.baud)
            self._write(self._configurator.start(self.clock()))
        return True

    def _find_baud(self) -> bool:
        """Stay at the configured rate if it carries NMEA/UBX, else probe the others."""
        assert self._serial is not None
        samples: dict[int, bytes] = {}
        for rate in candidate_bauds(self.baud):
            self._serial.baudrate = rate
            self._serial.reset_input_buffer()
            samples[rate] = self._sample(_PROBE_S)
            found = detect_baud({rate: samples[rate]})
            if found is not None:
                if found != self.baud:
                    log.info("%s: receiver found at %d baud", self.port, found)
                self.baud = found
                return True
        self._status(
            "not-a-gps",
            f"{self.port}: no NMEA or UBX at any of {', '.join(map(str, BAUD_RATES))} baud "
            "(not a GPS receiver, or not powered?)",
        )
        self._serial.baudrate = self.baud
        return False

    def _sample(self, seconds: float) -> bytes:
        assert self._serial is not None
        end = self.clock() + seconds
        data = bytearray()
        while self.clock() < end and not self._stop.is_set():
            data += self._serial.read(4096)
        return bytes(data)

    def _step(self) -> None:
        assert self._serial is not None
        # Wait for the first byte only, then take what has arrived: a fixed-size read would
        # hold a complete epoch back until its timeout, ageing every fix by as much.
        data = self._serial.read(self._serial.in_waiting or 1)
        if data:
            data += self._serial.read(self._serial.in_waiting)
        now = self.clock()
        if data:
            self._last_byte = now
            self._take(data, now)
        elif now - self._last_byte > self.silence_s:
            self._status("silent", f"{self.port}: no data for {now - self._last_byte:.1f} s")
        self._drive_configurator(now)

    def _take(self, data: bytes, now: float) -> None:
        for event in self.stream.feed(data):
            if isinstance(event, Sentence):
                for fix in self.assembler.push(event, now):
                    self._publish_fix(fix)
            elif isinstance(event, UbxFrame) and self._configurator is not None:
                self._write(self._configurator.receive(event.msg, now))

    def _publish_fix(self, fix: GpsFix) -> None:
        self.publish(fix)
        if fix.valid:
            self._status("ok", f"{self.port}: {fix.mode}-D fix, {fix.sats_used} satellites")
        elif self._valid or self._state in ("", "silent", "ok"):
            self._status("no-fix", f"{self.port}: receiver reports no position fix")
        self._valid = fix.valid

    def _drive_configurator(self, now: float) -> None:
        cfg = self._configurator
        if cfg is None:
            return
        if cfg.pending_baud is not None:
            assert self._serial is not None
            self._serial.baudrate = cfg.pending_baud
            self.baud = cfg.pending_baud
            self._write(cfg.baud_changed(now))
        elif cfg.deadline is not None and now >= cfg.deadline:
            self._write(cfg.tick(now))
        if cfg.finished:
            self._configurator = None
            try:
                self.config_result = cfg.result()
            except UbxConfigError as exc:
                self._status("config-failed", f"{self.port}: {exc}")
            else:
                log.info("%s configured: %s", self.port, self.config_result)

    def _write(self, data: bytes) -> None:
        if data and self._serial is not None:
            self._serial.write(data)

    def _close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def _status(self, state: str, detail: str) -> None:
        if state == self._state:
            return
        self._state = state
        level = logging.INFO if state == "ok" else logging.WARNING
        log.log(level, "%s", detail)
        self.publish(GpsStatus(self.port, state, detail, self.clock()))
