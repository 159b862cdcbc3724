"""OBSTACLE_DISTANCE to the autopilot, so ArduPilot's proximity avoidance (PRX1_TYPE=2,
"MAVLink") sees what the companion's camera sees.

The vision side hands the feed its latest sector summary (`update`, e.g. as a bus callback
for `companion.vision.obstacles.ObstacleSummary`); a thread sends the latest one at a fixed
rate through the one `MavLink` (ArduPilot treats a proximity source silent for 500 ms as
having no data, so the rate should stay above 2 Hz; 10 Hz is the usual camera rate). A summary
older than `stale_after_s` is not sent: the autopilot then reports the sensor as having no
data, which is the truth, rather than a picture of the world that is no longer current.

The message (MAVLink common, OBSTACLE_DISTANCE #330): `frame` MAV_FRAME_BODY_FRD, element i
at ``angle_offset + i * increment`` degrees clockwise from the nose, distances in cm,
``max_distance + 1`` = nothing there, UINT16_MAX = unknown (outside the camera's view).
This module stays on the bridge side: it needs only the summary's fields, not the vision
package.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.errors import LinkError

log = logging.getLogger(__name__)

SECTORS = 72


class SectorSummary(Protocol):
    """What the feed reads from a summary (`ObstacleSummary` has these)."""

    t: float
    sectors: Sequence[int]
    min_distance_cm: int
    max_distance_cm: int
    increment_deg: int
    angle_offset_deg: float


class _Sender(Protocol):
    def send(self, msg: MAVLinkMessage) -> None: ...


@dataclass(frozen=True)
class FeedStats:
    """Messages `sent`, ticks `skipped` for want of a fresh summary, send `errors`."""

    sent: int
    skipped: int
    errors: int
    last_error: str


def obstacle_distance_message(
    summary: SectorSummary,
    time_usec: int | None = None,
    sensor_type: int = mavlink.MAV_DISTANCE_SENSOR_UNKNOWN,
) -> MAVLinkMessage:
    """The OBSTACLE_DISTANCE message for a summary; ValueError for one that does not fit
    the message (not 72 sectors, distances outside uint16, bad increments)."""
    sectors = [int(v) for v in summary.sectors]
    if len(sectors) != SECTORS:
        raise ValueError(f"OBSTACLE_DISTANCE carries {SECTORS} sectors, got {len(sectors)}")
    if any(not 0 <= v <= 65535 for v in sectors):
        raise ValueError("sector distances must lie in 0..65535 cm")
    if not 0 < summary.increment_deg <= 255:
        raise ValueError(f"increment must lie in 1..255 deg, got {summary.increment_deg}")
    if not 0 <= summary.min_distance_cm < summary.max_distance_cm < 65535:
        raise ValueError("need 0 <= min_distance < max_distance < 65535 cm")
    stamp = int(summary.t * 1e6) if time_usec is None else int(time_usec)
    return mavlink.MAVLink_obstacle_distance_message(
        time_usec=max(0, stamp),
        sensor_type=sensor_type,
        distances=sectors,
        increment=int(summary.increment_deg),
        min_distance=int(summary.min_distance_cm),
        max_distance=int(summary.max_distance_cm),
        increment_f=float(summary.increment_deg),
        angle_offset=float(summary.angle_offset_deg),
        frame=mavlink.MAV_FRAME_BODY_FRD,
    )


class ObstacleFeed:
    """Sends the latest sector summary as OBSTACLE_DISTANCE at `rate_hz`.

    `link` is the `MavLink` (or a `Vehicle`, whose link is used); `clock` must be the clock
    the summaries' `t` is on (time.monotonic, as the capture stamps frames)."""

    def __init__(
        self,
        link: object,
        *,
        rate_hz: float = 10.0,
        stale_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        sender = getattr(link, "link", link)  # a Vehicle or the MavLink itself
        self._sender: _Sender = sender  # type: ignore[assignment]
        self.rate_hz = rate_hz
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: SectorSummary | None = None
        self._sent = self._skipped = self._errors = 0
        self._last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, summary: SectorSummary) -> None:
        """Hand over the newest summary (cheap: use it as a bus callback)."""
        with self._lock:
            self._latest = summary

    __call__ = update

    @property
    def stats(self) -> FeedStats:
        with self._lock:
            return FeedStats(self._sent, self._skipped, self._errors, self._last_error)

    def send_once(self) -> bool:
        """Send the latest summary now if it is fresh; True if a message went out."""
        with self._lock:
            summary = self._latest
        if summary is None or self._clock() - summary.t > self.stale_after_s:
            with self._lock:
                self._skipped += 1
            return False
        try:
            msg = obstacle_distance_message(summary)
            self._sender.send(msg)
        except (LinkError, ValueError) as exc:
            with self._lock:
                self._errors += 1
                self._last_error = str(exc)
            log.debug("OBSTACLE_DISTANCE not sent: %s", exc)
            return False
        with self._lock:
            self._sent += 1
        return True

    def start(self) -> ObstacleFeed:
        """Start the sending thread (once)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="obstacle-feed", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def __enter__(self) -> ObstacleFeed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.send_once()
            except Exception as exc:  # never let the feed thread die
                with self._lock:
                    self._errors += 1
                    self._last_error = repr(exc)
                log.exception("obstacle feed")
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)
