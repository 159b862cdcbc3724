"""Camera capture on OpenCV 4: the newest frame always wins.

Sources, from one spec string (`parse_source`):

| spec | kind | opened with |
| --- | --- | --- |
| ``0``, ``/dev/video0`` | ``device`` (V4L2) | ``cv2.VideoCapture(dev, cv2.CAP_V4L2)`` |
| ``csi``, ``csi:1`` | ``gstreamer`` (Jetson CSI sensor 0 / 1) | ``nvarguscamerasrc`` pipeline |
| ``gst:...`` or any text with `` ! `` | ``gstreamer`` (a pipeline string) | ``cv2.CAP_GSTREAMER`` |
| ``rtsp://``, ``rtsps://``, ``http(s)://`` | ``stream`` | ``cv2.CAP_FFMPEG``, with timeouts |
| an existing folder | ``folder`` (its images, sorted by name) | ``cv2.imdecode`` per file |
| an existing image file | ``folder`` of that one image | ``cv2.imdecode`` |
| any other existing file | ``file`` (video) | ``cv2.VideoCapture`` |

`Capture` reads on its own thread, apart from the caller's loop, into a one-frame slot: a new
frame replaces one the caller has not taken yet, and the replaced frame is counted in
`stats.dropped`, so latency is bounded by one frame time plus the caller's own work, never by
a queue that grows. `lossless=True` (for replays of files and folders, e.g. `skycourier
detect VIDEO`) makes the reader wait for the caller instead, so no frame is dropped.

A live source (device, CSI, RTSP) that stops delivering is released and reopened with
backoff, for as long as the capture runs; each attempt is counted and logged with the source
and the cause. A file or folder that ends puts the capture in the ``ended`` state and
`read` raises `EndOfStream` once the last frame was taken; one that vanishes is retried
`replay_reopen_limit` times and then ``failed``: `read` raises `CaptureError` with the cause.
Nothing the source does raises out of the capture thread.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from companion.vision.errors import VisionError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
SourceKind = Literal["device", "gstreamer", "stream", "file", "folder"]
LIVE_KINDS = frozenset({"device", "gstreamer", "stream"})
#: Seconds between reopen attempts of a live source; the last value repeats.
REOPEN_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
#: A live source that fails this many reads in a row is treated as gone.
_MAX_FAILED_READS = 3
_STREAM_TIMEOUT_MS = 5000


class CaptureError(VisionError):
    """A source that cannot be parsed, opened or read; `path` is the source spec."""


class EndOfStream(CaptureError):
    """A file or folder that has delivered its last frame."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: `kind`, the `target` cv2 opens (device index, path, URL, pipeline)
    and the original `spec` text for messages."""

    kind: SourceKind
    target: str | int
    spec: str

    @property
    def live(self) -> bool:
        """True for cameras and streams (reopened when lost); False for files and folders."""
        return self.kind in LIVE_KINDS

    def __str__(self) -> str:
        return f"{self.kind} {self.spec}"


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc) into BGR for OpenCV; the
    appsink keeps one buffer and drops the rest, so the driver never queues stale frames."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1 ! "
        "nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def parse_source(spec: str | int | os.PathLike) -> SourceSpec:
    """The source a spec names (see the module's table); CaptureError says why not."""
    if isinstance(spec, bool):
        raise CaptureError(str(spec), "not a camera source")
    if isinstance(spec, int):
        if spec < 0:
            raise CaptureError(str(spec), "a camera index must be 0 or more")
        return SourceSpec("device", spec, str(spec))
    text = os.fspath(spec).strip() if isinstance(spec, os.PathLike) else str(spec).strip()
    if not text:
        raise CaptureError("''", "empty source: give a device, pipeline, URL, file or folder")
    if text.isdigit():
        return SourceSpec("device", int(text), text)
    if re.fullmatch(r"/dev/video\d+", text) or text.startswith("/dev/v4l/"):
        return SourceSpec("device", text, text)
    match = re.fullmatch(r"csi(?::(\d+))?", text)
    if match:
        return SourceSpec("gstreamer", csi_pipeline(int(match.group(1) or 0)), text)
    if text.startswith("gst:") or " ! " in text or text.startswith("gst-launch"):
        pipeline = text.removeprefix("gst:").removeprefix("gst-launch-1.0").strip()
        if not pipeline:
            raise CaptureError(text, "empty GStreamer pipeline")
        if "appsink" not in pipeline:
            pipeline += (
                " ! videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1"
            )
        return SourceSpec("gstreamer", pipeline, text)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp"):
        return SourceSpec("stream", text, text)
    if scheme:
        raise CaptureError(text, f"unknown URL scheme {scheme!r}; use rtsp://, http(s)://")
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path), text)
    if path.is_file():
        kind: SourceKind = "folder" if path.suffix.lower() in IMAGE_SUFFIXES else "file"
        return SourceSpec(kind, str(path), text)
    if path.exists():
        raise CaptureError(text, "not a regular file, folder or camera device")
    if text.startswith("/dev/"):
        raise CaptureError(text, "not a V4L2 video device (expected /dev/videoN)")
    raise CaptureError(text, "no such file, folder or camera (see `parse_source` for specs)")


@dataclass(frozen=True)
class Frame:
    """One captured frame: BGR `image`, its capture `index` (0, 1, ... over the whole
    capture, gaps are dropped frames), `t_captured` (time.monotonic()), the `source`
    spec, and for folders the image's `name`."""

    image: np.ndarray
    index: int
    t_captured: float
    source: str
    name: str | None = None


@dataclass(frozen=True)
class CaptureStats:
    """Counters of one capture: frames `captured` from the source, `delivered` to the
    caller, `dropped` unread (replaced by a newer one), `reopen_attempts` and successful
    `reopens` of a lost source, `errors` (failed reads, unreadable images, failed opens)."""

    source: str
    state: str
    captured: int = 0
    delivered: int = 0
    dropped: int = 0
    reopen_attempts: int = 0
    reopens: int = 0
    errors: int = 0
    last_error: str = ""


class FrameReader(Protocol):
    """What `Capture` reads from: `read()` returns the next BGR frame, None at the end of a
    file or folder, or raises CaptureError when the source failed (lost, unreadable)."""

    name: str | None

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class _SkipFrame(Exception):
    """One unreadable image of a folder: counted and skipped, the folder goes on."""


class VideoReader:
    """A cv2.VideoCapture behind the FrameReader interface."""

    name: str | None = None

    def __init__(self, source: SourceSpec) -> None:
        self.source = source
        self.live = source.live
        api = {
            "device": cv2.CAP_V4L2,
            "gstreamer": cv2.CAP_GSTREAMER,
            "stream": cv2.CAP_FFMPEG,
        }.get(source.kind, cv2.CAP_ANY)
        params: list[int] = []
        if source.kind == "stream":
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                _STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                _STREAM_TIMEOUT_MS,
            ]
        try:
            cap = cv2.VideoCapture(source.target, api, params)
        except cv2.error as exc:
            raise CaptureError(source.spec, f"cannot open: {exc}") from exc
        if not cap.isOpened():
            cap.release()
            raise CaptureError(source.spec, self._why_not_open())
        if self.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where the backend honours it
        self._cap = cap
        self._failed = 0

    def _why_not_open(self) -> str:
        source = self.source
        if source.kind == "device":
            dev = source.target if isinstance(source.target, str) else f"/dev/video{source.target}"
            if not Path(dev).exists():
                return f"{dev} does not exist (camera unplugged or not enabled)"
            if not os.access(dev, os.R_OK | os.W_OK):
                return f"no permission on {dev} (add the user to the 'video' group)"
            return f"{dev} exists but V4L2 could not open it (busy or not a capture device)"
        if source.kind == "gstreamer":
            return "GStreamer pipeline did not start (is OpenCV built with GStreamer?)"
        if source.kind == "stream":
            return "stream did not open (host unreachable, wrong URL or credentials)"
        if not Path(str(source.target)).exists():
            return "no such file"
        return "not a video OpenCV can decode"

    def read(self) -> np.ndarray | None:
        ok, image = self._cap.read()
        if ok and image is not None:
            self._failed = 0
            return image
        if not self.live:
            return None  # end of the file
        self._failed += 1
        if self._failed >= _MAX_FAILED_READS:
            raise CaptureError(self.source.spec, f"no frame in {self._failed} reads: lost")
        raise _SkipFrame("read failed")

    def close(self) -> None:
        self._cap.release()


class FolderReader:
    """The images of a folder in name order (or a single image file), as frames."""

    def __init__(self, source: SourceSpec) -> None:
        self.source = source
        root = Path(str(source.target))
        if root.is_file():
            self._files = [root]
        elif root.is_dir():
            self._files = sorted(
                (p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: p.name,
            )
        else:
            raise CaptureError(source.spec, "no such file or folder")
        self._root = root
        self._next = 0
        self.name: str | None = None

    def __len__(self) -> int:
        return len(self._files)

    def seek(self, position: int) -> None:
        """Continue from the `position`-th image (after a reopen)."""
        self._next = max(0, position)

    @property
    def position(self) -> int:
        return self._next

    def read(self) -> np.ndarray | None:
        if self._next >= len(self._files):
            if not self._root.exists():  # emptied and removed while we read it
                raise CaptureError(self.source.spec, f"{self._root} vanished")
            return None
        path = self._files[self._next]
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            if not self._root.exists():
                raise CaptureError(self.source.spec, f"{self._root} vanished") from exc
            self._next += 1
            raise _SkipFrame(f"{path.name}: {exc.strerror or exc}") from exc
        self._next += 1
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            raise _SkipFrame(f"{path.name}: not a decodable image")
        self.name = path.name
        return image

    def close(self) -> None:
        pass


def open_reader(source: SourceSpec) -> FrameReader:
    """The reader for a source; CaptureError names the source and why it did not open."""
    if source.kind == "folder":
        return FolderReader(source)
    return VideoReader(source)


@dataclass
class _Counters:
    captured: int = 0
    delivered: int = 0
    dropped: int = 0
    reopen_attempts: int = 0
    reopens: int = 0
    errors: int = 0
    last_error: str = ""


class Capture:
    """Reads a source on its own thread; `read(timeout)` returns the newest frame.

    `pace_fps` limits how fast a file or folder is read (a replay at camera speed);
    `lossless` makes the reader wait for the caller (replays where every frame counts);
    `replay_reopen_limit` bounds the retries of a file or folder that vanished;
    `opener` builds the reader (tests inject failing sources); `clock` stamps frames.
    """

    def __init__(
        self,
        source: str | int | os.PathLike | SourceSpec,
        *,
        lossless: bool = False,
        pace_fps: float | None = None,
        reopen_backoff_s: Sequence[float] = REOPEN_BACKOFF_S,
        replay_reopen_limit: int = 3,
        opener: Callable[[SourceSpec], FrameReader] = open_reader,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source if isinstance(source, SourceSpec) else parse_source(source)
        self.lossless = lossless
        self.pace_fps = pace_fps
        self.reopen_backoff_s = tuple(reopen_backoff_s) or (1.0,)
        self.replay_reopen_limit = replay_reopen_limit
        self._opener = opener
        self._clock = clock
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._state = "idle"
        self._failure: CaptureError | None = None
        self._counters = _Counters()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Capture:
        """Start the capture thread (once); returns self."""
        if self._thread is None:
            self._set_state("opening")
            self._thread = threading.Thread(
                target=self._run, name=f"capture-{self.source.kind}", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and release the source; safe to call twice."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._set_state("closed", only_if_running=True)

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the caller's side -----------------------------------------------------------------

    @property
    def state(self) -> str:
        """idle, opening, running, reconnecting, ended, failed or closed."""
        with self._cond:
            return self._state

    @property
    def stats(self) -> CaptureStats:
        """A snapshot of the counters."""
        with self._cond:
            return CaptureStats(str(self.source.spec), self._state, **asdict(self._counters))

    def read(self, timeout: float | None = 1.0) -> Frame | None:
        """The newest frame not yet returned, waiting up to `timeout` s for one (None: wait
        as long as it takes); None if none came in time (camera stalled or reconnecting).
        Raises EndOfStream after the last frame of a file or folder, CaptureError when the
        source failed for good or the capture was closed."""
        if self._thread is None:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._slot is not None:
                    frame, self._slot = self._slot, None
                    self._counters.delivered += 1
                    self._cond.notify_all()
                    return frame
                if self._state == "ended":
                    raise EndOfStream(self.source.spec, "end of the source")
                if self._state == "failed":
                    assert self._failure is not None
                    raise self._failure
                if self._state == "closed":
                    raise CaptureError(self.source.spec, "capture is closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """Frames until the end of a file or folder (or `close`); a live source's stall
        longer than `timeout` ends the iteration too (None: wait for ever)."""
        while True:
            try:
                frame = self.read(timeout)
            except EndOfStream:
                return
            except CaptureError:
                if self.state == "closed":
                    return
                raise
            if frame is None:
                return
            yield frame

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    # -- the capture thread ----------------------------------------------------------------

    def _set_state(self, state: str, *, only_if_running: bool = False) -> None:
        with self._cond:
            if only_if_running and self._state in ("ended", "failed"):
                return
            self._state = state
            self._cond.notify_all()

    def _error(self, cause: str) -> None:
        with self._cond:
            self._counters.errors += 1
            self._counters.last_error = cause

    def _run(self) -> None:
        reader: FrameReader | None = None
        position = 0  # frames taken from a replay, so that a reopen resumes after them
        attempts = 0  # reopen attempts since the last good open
        first = True
        try:
            while not self._stop.is_set():
                if reader is None:
                    reader = self._open(first, attempts)
                    if reader is None:
                        attempts += 1
                        if not self.source.live and attempts >= self.replay_reopen_limit:
                            return self._fail()
                        delay = self.reopen_backoff_s[
                            min(attempts - 1, len(self.reopen_backoff_s) - 1)
                        ]
                        self._stop.wait(delay)
                        continue
                    if isinstance(reader, FolderReader):
                        reader.seek(position)
                    if not first:
                        with self._cond:
                            self._counters.reopens += 1
                        log.info("camera %s reopened after %d attempt(s)", self.source, attempts)
                    first, attempts = False, 0
                    self._set_state("running")
                try:
                    image = reader.read()
                except _SkipFrame as skip:
                    self._error(str(skip))
                    log.debug("camera %s: %s", self.source, skip)
                    if isinstance(reader, FolderReader):
                        position = reader.position
                    continue
                except Exception as exc:  # lost: a CaptureError, or anything cv2 raises
                    cause = exc.cause if isinstance(exc, CaptureError) else repr(exc)
                    self._error(cause)
                    log.warning("camera %s lost: %s; reopening", self.source, cause)
                    self._release(reader)
                    reader = None
                    self._set_state("reconnecting")
                    continue
                if image is None:
                    self._set_state("ended")
                    log.info("camera %s: end of the source", self.source)
                    return
                if isinstance(reader, FolderReader):
                    position = reader.position
                self._publish(image, getattr(reader, "name", None))
                if self.pace_fps:
                    self._stop.wait(1.0 / self.pace_fps)
        except Exception as exc:  # never let the thread die silently
            log.exception("camera %s: capture thread failed", self.source)
            self._fail(CaptureError(self.source.spec, f"capture thread failed: {exc!r}"))
        finally:
            if reader is not None:
                self._release(reader)

    def _open(self, first: bool, attempts: int) -> FrameReader | None:
        if not first or attempts:
            with self._cond:
                self._counters.reopen_attempts += 1
        try:
            return self._opener(self.source)
        except Exception as exc:
            cause = exc.cause if isinstance(exc, CaptureError) else repr(exc)
            self._error(cause)
            level = logging.WARNING if attempts in (0, 1) or attempts % 10 == 0 else logging.DEBUG
            log.log(level, "camera %s: cannot open: %s", self.source, cause)
            self._set_state("reconnecting" if not first or self.source.live else "opening")
            return None

    def _release(self, reader: FrameReader) -> None:
        try:
            reader.close()
        except Exception as exc:
            log.debug("camera %s: release failed: %r", self.source, exc)

    def _fail(self, failure: CaptureError | None = None) -> None:
        with self._cond:
            self._failure = failure or CaptureError(
                self.source.spec,
                f"gave up after {self._counters.reopen_attempts} reopen attempt(s): "
                f"{self._counters.last_error or 'cannot open'}",
            )
            self._state = "failed"
            self._cond.notify_all()
        log.error("camera %s failed: %s", self.source, self._failure.cause)

    def _publish(self, image: np.ndarray, name: str | None) -> None:
        with self._cond:
            if self.lossless:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
            if self._slot is not None:
                self._counters.dropped += 1
            self._slot = Frame(
                image, self._counters.captured, self._clock(), str(self.source.spec), name
            )
            self._counters.captured += 1
            self._cond.notify_all()
