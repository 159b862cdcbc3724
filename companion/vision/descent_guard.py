"""The descent-cone guard: is a person or vehicle below the drone at the hand-over?

The vision loop feeds it each frame's detections with the frame's time (`update`); `reason`
is then why the hand-over must hold (None: the cone is clear). The mission does not ask the
guard: whoever runs the camera turns each frame into a `ConeVerdict` stamped with the frame's
autopilot time, and the mission core judges that time, so a camera that stops or lags
(no fresh frame) holds the descent instead of counting as clear.

Geometry assumption: the camera looks down (`CameraGeometry.pitch_down_deg`, 90 = straight
down, the usual mount of a delivery drone's hand-over camera; a forward camera pitched 45 to
60 degrees down works too), its image top towards the nose. The descent cone has its apex at
the camera and its axis straight down (the vehicle is level while it hovers); an object is
inside when any part of its box lies within `half_angle_deg` of the vertical, i.e. on the
ground within ``altitude x tan(half_angle)`` of the point below the drone. The box's point
nearest to the nadir pixel is tested, so a person at the edge of the cone counts.

Hysteresis: a hold starts on the first frame with an intruder; it ends only after frames
have shown the cone clear for `clear_time_s` of frame time (time alone, without frames,
never clears it).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from companion.vision.detector import Detection
from companion.vision.obstacles import CameraGeometry

log = logging.getLogger(__name__)

#: Classes that stop a hand-over: people and vehicles (COCO names); animals are optional.
DEFAULT_GUARD_CLASSES = frozenset({"person", "bicycle", "car", "motorcycle", "bus", "truck"})


@dataclass(frozen=True)
class ConeIntrusion:
    """An object found inside the descent cone: its class, score and angle off vertical."""

    class_name: str
    score: float
    off_vertical_deg: float
    box: tuple[float, float, float, float]


def off_vertical_of_box(box: tuple[float, float, float, float], geometry: CameraGeometry) -> float:
    """Smallest angle from the vertical of any point of `box` (pixels of `geometry`)."""
    x1, y1, x2, y2 = box
    nadir = geometry.nadir_pixel()
    if nadir is None:
        return 90.0
    u = min(max(nadir[0], min(x1, x2)), max(x1, x2))
    v = min(max(nadir[1], min(y1, y2)), max(y1, y2))
    return geometry.off_vertical_deg(u, v)


def cone_intrusions(
    detections: Iterable[Detection],
    geometry: CameraGeometry,
    half_angle_deg: float,
    classes: Iterable[str] = DEFAULT_GUARD_CLASSES,
    min_score: float = 0.0,
) -> list[ConeIntrusion]:
    """The detections of `classes` inside the cone, nearest the axis first."""
    wanted = set(classes)
    found: list[ConeIntrusion] = []
    for det in detections:
        if det.class_name not in wanted or det.score < min_score:
            continue
        box = tuple(float(v) for v in det.box)
        if not all(math.isfinite(v) for v in box):
            continue
        angle = off_vertical_of_box(box, geometry)  # type: ignore[arg-type]
        if angle <= half_angle_deg:
            found.append(ConeIntrusion(det.class_name, float(det.score), angle, box))  # type: ignore[arg-type]
    found.sort(key=lambda c: c.off_vertical_deg)
    return found


class DescentGuard:
    """Holds the hand-over while people or vehicles are in the descent cone.

    `geometry`: the downward camera; `half_angle_deg`: the cone; `clear_time_s`: how long
    frames must show the cone clear before the hold ends; `classes`, `min_score`: what counts.
    """

    def __init__(
        self,
        geometry: CameraGeometry | None = None,
        *,
        half_angle_deg: float = 30.0,
        clear_time_s: float = 2.0,
        classes: Iterable[str] = DEFAULT_GUARD_CLASSES,
        min_score: float = 0.3,
    ) -> None:
        if not 0.0 < half_angle_deg < 90.0:
            raise ValueError(f"half_angle_deg must lie in (0, 90), got {half_angle_deg}")
        if clear_time_s < 0:
            raise ValueError("clear_time_s must be 0 or more")
        self.geometry = geometry or CameraGeometry(pitch_down_deg=90.0)
        self.half_angle_deg = half_angle_deg
        self.clear_time_s = clear_time_s
        self.classes = frozenset(classes)
        self.min_score = min_score
        self._lock = threading.Lock()
        self._intrusions: list[ConeIntrusion] = []
        self._clear_since: float | None = None  # first clear frame after an intruder
        self._holding = False
        self.holds = 0  # how many holds have started
        self.frames = 0

    def update(
        self,
        detections: Iterable[Detection],
        frame_size: tuple[int, int] | None,
        t: float,
    ) -> list[ConeIntrusion]:
        """Feed one frame's detections (`frame_size` = width, height of that frame; `t` its
        time); returns the intruders found in it."""
        geometry = self.geometry.resized(*frame_size) if frame_size else self.geometry
        found = cone_intrusions(
            detections, geometry, self.half_angle_deg, self.classes, self.min_score
        )
        with self._lock:
            self.frames += 1
            if found:
                self._intrusions = found
                self._clear_since = None
                if not self._holding:
                    self._holding = True
                    self.holds += 1
                    log.info("descent cone: %s", _describe(found))
            elif self._holding:
                if self._clear_since is None:
                    self._clear_since = t
                if t - self._clear_since >= self.clear_time_s:
                    self._holding = False
                    self._intrusions = []
                    self._clear_since = None
                    log.info("descent cone clear for %.1f s: resume", self.clear_time_s)
        return found

    @property
    def holding(self) -> bool:
        """True while the frames so far ask for a hold."""
        with self._lock:
            return self._holding

    @property
    def reason(self) -> str | None:
        """Why to hold after the frames so far (None: clear)."""
        with self._lock:
            if not self._holding:
                return None
            found = list(self._intrusions)
        return _describe(found) if found else "descent cone not yet clear"


def _describe(found: list[ConeIntrusion]) -> str:
    first = found[0]
    more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
    angle = f"{first.off_vertical_deg:.0f} deg off vertical"
    return f"{first.class_name} inside the descent cone, {angle}{more}"
