"""The descent-cone guard: hold the hand-over while a person or vehicle is below the drone.

It implements the mission's `ObstacleMonitor` seam (`hold_reason(state)`, in
`companion.mission.delivery`): the vision loop calls `update(detections, ...)` with each
frame's detections, and the mission asks `hold_reason(state)` as it flies; a reason means
"hold position".

Geometry assumption: the camera looks down (`CameraGeometry.pitch_down_deg`, 90 = straight
down, the usual mount of a delivery drone's hand-over camera; a forward camera pitched 45 to
60 degrees down works too), its image top towards the nose. The descent cone has its apex at
the camera and its axis straight down (the vehicle is level while it hovers); an object is
inside when any part of its box lies within `half_angle_deg` of the vertical, i.e. on the
ground within ``altitude x tan(half_angle)`` of the point below the drone. The box's point
nearest to the nadir pixel is tested, so a person at the edge of the cone counts.

Hysteresis: a hold starts on the first frame with an intruder; it ends only after frames
have shown the cone clear for `clear_time_s` (a stale or dead camera does not count as
clear: the hold stays until frames say so, or until the guard is not `active`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
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
    """`ObstacleMonitor` for the hand-over: holds while people or vehicles are in the cone.

    `geometry`: the downward camera; `half_angle_deg`: the cone; `clear_time_s`: how long
    frames must show the cone clear before the descent resumes; `active_below_m`: only guard
    at or below this altitude above home (None: always, e.g. when the caller asks only during
    descent and hand-over); `clock`: the time base of `update` and `hold_reason` (the
    simulator passes its vehicle clock).
    """

    def __init__(
        self,
        geometry: CameraGeometry | None = None,
        *,
        half_angle_deg: float = 30.0,
        clear_time_s: float = 2.0,
        classes: Iterable[str] = DEFAULT_GUARD_CLASSES,
        min_score: float = 0.3,
        active_below_m: float | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self.active_below_m = active_below_m
        self._clock = clock
        self._lock = threading.Lock()
        self._intrusions: list[ConeIntrusion] = []
        self._last_seen: float | None = None  # last frame with an intruder
        self._clear_since: float | None = None  # first clear frame after it
        self._holding = False
        self.holds = 0  # how many holds have started
        self.frames = 0

    def update(
        self,
        detections: Iterable[Detection],
        frame_size: tuple[int, int] | None = None,
        t: float | None = None,
    ) -> list[ConeIntrusion]:
        """Feed one frame's detections (`frame_size` = width, height of that frame);
        returns the intruders found in it."""
        geometry = self.geometry.resized(*frame_size) if frame_size else self.geometry
        found = cone_intrusions(
            detections, geometry, self.half_angle_deg, self.classes, self.min_score
        )
        now = self._clock() if t is None else t
        with self._lock:
            self.frames += 1
            if found:
                self._intrusions = found
                self._last_seen = now
                self._clear_since = None
                if not self._holding:
                    self._holding = True
                    self.holds += 1
                    log.info("descent cone: %s", _describe(found))
            elif self._holding:
                if self._clear_since is None:
                    self._clear_since = now
                if now - self._clear_since >= self.clear_time_s:
                    self._holding = False
                    self._intrusions = []
                    self._clear_since = None
                    log.info("descent cone clear for %.1f s: resume", self.clear_time_s)
        return found

    @property
    def holding(self) -> bool:
        """True while the guard asks for a hold (ignoring `active_below_m`)."""
        with self._lock:
            return self._holding

    def hold_reason(self, state: object) -> str | None:
        """The mission seam: why to hold (None: carry on). `state` is the VehicleState; the
        guard is idle above `active_below_m`."""
        if self.active_below_m is not None:
            position = getattr(state, "position", None)
            if position is None or position.alt_rel_m > self.active_below_m:
                return None
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
