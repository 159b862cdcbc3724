"""A camera for the hardware-in-the-loop rig: the simulated downward camera
(`sim.camera.SimCamera`) served as MJPEG over HTTP, like an IP camera.

The daemon opens it as any network camera (`[vision] source = "http://..."`, read through
OpenCV's FFmpeg backend), so its whole vision path runs as on the drone: capture thread,
detector, obstacle feed to the autopilot. Frames show the ground below the built-in vehicle
as it flies (the scene's pad is at home), rendered `fps` times a second in real time, the
newest one sent to every viewer (``multipart/x-mixed-replace``, one JPEG per part, each with
its Content-Length, which FFmpeg's mpjpeg demuxer reads).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import cv2
import numpy as np

from sim.camera import SimCamera, SimScene
from sim.vehicle import VehicleServer

log = logging.getLogger(__name__)

PATH = "/camera.mjpg"
BOUNDARY = "skycourierframe"
JPEG_QUALITY = 80


class MjpegFeed:
    """An MJPEG feed on 127.0.0.1 (a free port; `url`) of the frames a subclass renders in
    the threads its `_workers` name (each hands images to `_encode_and_publish`, JPEG at
    `quality`); `what` names it in thread names, errors and logs."""

    def __init__(
        self, what: str, path: str = PATH, boundary: str = BOUNDARY, quality: int = JPEG_QUALITY
    ) -> None:
        self.what, self.path, self.quality = what, path, quality
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._count = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        handler = mjpeg_handler(self._next, what, path, boundary)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}{self.path}"

    @property
    def frames(self) -> int:
        """Frames rendered so far."""
        return self._count

    def _workers(self) -> dict[str, Callable[[], None]]:
        """The threads that render (name: target)."""
        raise NotImplementedError

    def start(self) -> Self:
        targets = {**self._workers(), "http": self._http.serve_forever}
        tag = self.what.replace(" ", "-")
        self._threads = [
            threading.Thread(target=target, name=f"hil-{tag}-{name}", daemon=True)
            for name, target in targets.items()
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(5.0)

    def _encode_and_publish(self, image: np.ndarray) -> None:
        """Send `image` to every viewer as the newest frame."""
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            log.error("%s feed: a frame could not be encoded", self.what)
            return
        with self._cond:
            self._jpeg, self._count = encoded.tobytes(), self._count + 1
            self._cond.notify_all()

    def _next(self, after: int) -> tuple[int, bytes] | None:
        """The first frame newer than number `after` (waiting for it); None once stopped."""
        with self._cond:
            while self._count <= after and not self._stop.is_set():
                self._cond.wait(1.0)
            if self._stop.is_set() or self._jpeg is None:
                return None
            return self._count, self._jpeg


class MjpegCamera(MjpegFeed):
    """The feed of the camera under `server`'s vehicle on 127.0.0.1 (a free port): `url`."""

    def __init__(self, server: VehicleServer, *, fps: float = 5.0) -> None:
        super().__init__("camera")
        self._vehicle = server
        self.period_s = 1.0 / fps
        self._camera = SimCamera(SimScene(people=()))

    def _workers(self) -> dict[str, Callable[[], None]]:
        return {"render": self._render}

    def _render(self) -> None:
        while not self._stop.wait(self.period_s):
            snap = self._vehicle.state
            self._encode_and_publish(
                self._camera.frame(
                    snap.alt_rel_m, self._vehicle.sim_time, (snap.north_m, snap.east_m)
                )
            )


def mjpeg_handler(
    next_frame: Callable[[int], tuple[int, bytes] | None],
    what: str,
    path: str = PATH,
    boundary: str = BOUNDARY,
) -> type[BaseHTTPRequestHandler]:
    """The HTTP handler of an MJPEG feed at `path`: each viewer gets every frame newer than
    the last it was sent (`next_frame(shown)`: its number and JPEG, None once the feed stops),
    as multipart/x-mixed-replace parts. `what` names the feed in errors and logs."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != path:
                self.send_error(404, f"the {what} is at {path}")
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={boundary}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            shown = 0
            with contextlib.suppress(OSError):  # the viewer went away
                while (frame := next_frame(shown)) is not None:
                    shown, jpeg = frame
                    head = (
                        f"--{boundary}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(jpeg)}\r\n\r\n"
                    )
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    self.wfile.flush()

        def log_message(self, format: str, *args: object) -> None:
            log.debug(f"{what} feed: " + format, *args)

    return Handler
