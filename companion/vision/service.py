"""The daemon's vision loop: camera frames in, detections and obstacles out.

`start_vision` builds it from `[vision]`: a `Capture` reading the camera on its own thread
(the newest frame wins; a camera that disappears is logged and reopened there), and one
vision thread that takes the newest frame at most `max_fps` times a second, runs the
`Detector`, and publishes on the bus

- `Detections`: the frame's detections and their counts by class (the telemetry sample's
  ``detections``; a `DescentGuard` can take ``detections`` and ``frame_size`` as they are),
- `ObstacleSummary`: the 72 obstacle sectors from `ObstacleMapper`,

and hands each summary to an `ObstacleFeed`, which sends OBSTACLE_DISTANCE to the autopilot
at `obstacle_rate_hz` (PRX1_TYPE=2) when a vehicle is given. Vision is an addition, never a
condition of flight: a missing or corrupt model, an unknown class name or a source that does
not parse is a `StartError` naming what and where, which the daemon's supervisor shows in
`skycourier status` and logs as one line while the rest runs on, trying vision again later
(a model built meanwhile is taken up); a frame the detector cannot handle is counted,
logged and skipped.

Clocks: `clock` stamps the frames (`Frame.t_captured`, hence the summaries' `t`) and is the
one the feed judges staleness by, so the two always agree. Pacing uses real time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from companion.bus import Bus
from companion.config import VisionConfig
from companion.supervisor import StartError

if TYPE_CHECKING:  # the heavy modules (cv2, onnxruntime) load when vision starts
    from companion.vision.capture import Capture, CaptureStats
    from companion.vision.detector import Detection, Detector
    from companion.vision.obstacles import ObstacleMapper
    from firmware_bridge.obstacle_feed import ObstacleFeed

log = logging.getLogger(__name__)

#: How long `read` waits for a frame before checking whether to stop.
_READ_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Detections:
    """One analysed frame, for the bus: `counts` (class name, how many), most frequent
    first; `t` when it was captured (the vision clock); `frame_index` the capture's index
    (gaps are frames dropped for newer ones); `frame_size` (width, height); `detections` the
    boxes themselves, highest score first; `infer_ms` the detector's time on it."""

    t: float
    frame_index: int
    counts: tuple[tuple[str, int], ...]
    frame_size: tuple[int, int]
    detections: tuple[Detection, ...] = ()
    infer_ms: float = 0.0

    def as_dict(self) -> dict[str, int]:
        """Counts by class name (the telemetry record's ``detections``)."""
        return dict(self.counts)

    def count(self, class_name: str) -> int:
        """How many objects of a class the frame shows."""
        return self.as_dict().get(class_name, 0)


@dataclass(frozen=True)
class VisionStats:
    """Frames analysed, detections found, OBSTACLE_DISTANCE messages sent (and failed to
    send), frames the detector failed on (`errors`), the last error, and the capture's own
    counters (frames captured, dropped for newer ones, reopens of a lost camera)."""

    frames: int
    detections: int
    obstacles_sent: int
    feed_errors: int
    errors: int
    last_error: str
    running: bool
    capture: CaptureStats


class VisionService:
    """The vision thread around a started capture, a detector, a mapper and an optional
    feed; `start_vision` builds one from the configuration."""

    def __init__(
        self,
        bus: Bus,
        capture: Capture,
        detector: Detector,
        mapper: ObstacleMapper,
        feed: ObstacleFeed | None = None,
        *,
        max_fps: float = 5.0,
    ) -> None:
        if max_fps <= 0:
            raise ValueError("max_fps must be positive")
        self.bus = bus
        self.capture = capture
        self.detector = detector
        self.mapper = mapper
        self.feed = feed
        self.max_fps = max_fps
        self._lock = threading.Lock()
        self._frames = self._detections = self._errors = 0
        self._last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The source ran out (a file or a folder): vision ended normally, not a failure.
        self.ended = False

    def start(self) -> VisionService:
        """Start the capture, the feed and the vision thread (once); returns self."""
        if self._thread is None:
            self.capture.start()
            if self.feed is not None:
                self.feed.start()
            self._thread = threading.Thread(target=self._run, name="vision", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the vision thread, the capture and the feed, and wait for them; safe twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("vision thread still busy after %.1f s", timeout)
        self.capture.close(timeout)
        if self.feed is not None:
            self.feed.close()

    close = stop

    @property
    def running(self) -> bool:
        """True while the vision thread runs (it ends at the end of a file or folder)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> VisionStats:
        feed = self.feed.stats if self.feed is not None else None
        with self._lock:
            return VisionStats(
                frames=self._frames,
                detections=self._detections,
                obstacles_sent=feed.sent if feed else 0,
                feed_errors=feed.errors if feed else 0,
                errors=self._errors,
                last_error=self._last_error,
                running=self.running,
                capture=self.capture.stats,
            )

    def process(self, image, frame_index: int, t: float) -> Detections:
        """Detect, map and publish one BGR frame (the vision thread's step; tests call it)."""
        started = time.perf_counter()
        found = self.detector.detect(image)
        infer_ms = (time.perf_counter() - started) * 1000.0
        height, width = image.shape[:2]
        counts = Counter(d.class_name for d in found)
        message = Detections(
            t=t,
            frame_index=frame_index,
            counts=tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            frame_size=(int(width), int(height)),
            detections=tuple(found),
            infer_ms=infer_ms,
        )
        summary = self.mapper.summarize(found, t, (width, height), frame_index)
        with self._lock:
            self._frames += 1
            self._detections += len(found)
        self.bus.publish(message)
        self.bus.publish(summary)
        if self.feed is not None:
            self.feed.update(summary)
        return message

    def _run(self) -> None:
        from companion.vision.capture import CaptureError, EndOfStream

        period = 1.0 / self.max_fps
        source = self.capture.source
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                frame = self.capture.read(_READ_TIMEOUT_S)
            except EndOfStream:
                log.info("vision: camera %s ended; no more frames", source)
                self.ended = True
                return
            except CaptureError as exc:
                if not self._stop.is_set():
                    self._count_error(f"camera: {exc.cause}")
                    log.error("vision off: camera %s: %s", source, exc.cause)
                return
            if frame is None:
                continue  # stalled or reconnecting: the capture logs and retries
            try:
                self.process(frame.image, frame.index, frame.t_captured)
            except Exception as exc:  # a bad frame must not end vision for the flight
                errors = self._count_error(f"frame {frame.index}: {exc!r}")
                if errors & (errors - 1) == 0:  # 1, 2, 4, 8...: visible, not spam
                    log.error(
                        "vision: frame %d of %s failed (%d so far): %r",
                        frame.index,
                        source,
                        errors,
                        exc,
                    )
            self._stop.wait(max(0.0, started + period - time.monotonic()))

    def _count_error(self, text: str) -> int:
        with self._lock:
            self._errors += 1
            self._last_error = text
            return self._errors


def start_vision(
    config: VisionConfig,
    bus: Bus,
    vehicle: object | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> VisionService | None:
    """Start vision from `[vision]`; None when no camera is configured. `vehicle` (a
    `Vehicle` or its `MavLink`): where the OBSTACLE_DISTANCE feed goes; None: obstacles go on
    the bus only. A camera, model or class list that cannot be used raises `StartError`
    saying what and where (the daemon's supervisor shows it and tries again later)."""
    if config.source is None:
        log.info("vision off: no camera configured ([vision] source)")
        return None
    return _start(config, bus, vehicle, clock)


def _start(
    config: VisionConfig, bus: Bus, vehicle: object | None, clock: Callable[[], float]
) -> VisionService | None:
    from companion.vision.capture import Capture, CaptureError, parse_source
    from companion.vision.detector import Detector, model_path
    from companion.vision.errors import ModelError
    from companion.vision.obstacles import CameraGeometry, ObstacleMapper
    from firmware_bridge.obstacle_feed import ObstacleFeed

    assert config.source is not None
    try:
        source = parse_source(config.source)
    except CaptureError as exc:
        raise StartError(f"[vision] source {exc.path}: {exc.cause}") from None
    path = model_path(config.variant, config.models_dir)
    try:
        detector = Detector(
            path, conf_threshold=config.conf, classes=config.class_names, threads=config.threads
        )
    except ModelError as exc:
        out = f" --out {config.models_dir}" if config.models_dir is not None else ""
        raise StartError(
            f"{exc.path}: {exc.cause}; run `skycourier models build --variant "
            f"{config.variant}`{out}"
        ) from None
    except ValueError as exc:  # an unknown class name
        raise StartError(f"[vision] classes: {exc}") from None
    geometry = CameraGeometry(
        hfov_deg=config.hfov_deg, yaw_deg=config.yaw_deg, pitch_down_deg=config.pitch_down_deg
    )
    capture = Capture(source, pace_fps=None if source.live else config.max_fps, clock=clock)
    feed = None
    if vehicle is not None:
        # A summary is stale after a second, or two frame periods at a low frame rate.
        stale_s = max(1.0, 2.0 / config.max_fps)
        feed = ObstacleFeed(
            vehicle, rate_hz=config.obstacle_rate_hz, stale_after_s=stale_s, clock=clock
        )
    mapper = ObstacleMapper(geometry)
    service = VisionService(bus, capture, detector, mapper, feed, max_fps=config.max_fps)
    log.info(
        "vision: camera %s, %s, %d thread(s), at most %g fps%s",
        source,
        detector,
        config.threads,
        config.max_fps,
        f", OBSTACLE_DISTANCE at {config.obstacle_rate_hz:g} Hz" if feed else "",
    )
    return service.start()
