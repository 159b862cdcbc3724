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

import cv2

from sim.camera import SimCamera, SimScene
from sim.vehicle import VehicleServer

log = logging.getLogger(__name__)

PATH = "/camera.mjpg"
BOUNDARY = "skycourierframe"
JPEG_QUALITY = 80


class MjpegCamera:
    """The feed of the camera under `server`'s vehicle on 127.0.0.1 (a free port): `url`."""

    def __init__(self, server: VehicleServer, *, fps: float = 5.0) -> None:
        self._vehicle = server
        self.period_s = 1.0 / fps
        self._camera = SimCamera(SimScene(people=()))
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._count = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self.frames = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}{PATH}"

    def start(self) -> MjpegCamera:
        self._threads = [
            threading.Thread(target=self._render, name="hil-camera", daemon=True),
            threading.Thread(target=self._http.serve_forever, name="hil-camera-http", daemon=True),
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

    def _render(self) -> None:
        while not self._stop.wait(self.period_s):
            snap = self._vehicle.state
            image = self._camera.frame(
                snap.alt_rel_m, self._vehicle.sim_time, (snap.north_m, snap.east_m)
            )
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                log.error("camera feed: a frame could not be encoded")
                continue
            with self._cond:
                self._jpeg, self._count = encoded.tobytes(), self._count + 1
                self.frames = self._count
                self._cond.notify_all()

    def _next(self, after: int) -> tuple[int, bytes] | None:
        """The first frame newer than number `after` (waiting for it); None once stopped."""
        with self._cond:
            while self._count <= after and not self._stop.is_set():
                self._cond.wait(1.0)
            if self._stop.is_set() or self._jpeg is None:
                return None
            return self._count, self._jpeg

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return mjpeg_handler(self._next, "camera")


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
