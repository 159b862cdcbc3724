"""Detections become obstacles: a bearing and a range each, packed into the 72 sectors of
MAVLink's OBSTACLE_DISTANCE for ArduPilot's proximity avoidance (PRX1_TYPE=2, "MAVLink").

Geometry (a pinhole camera, square pixels, principal point at the image centre):

- focal length in pixels ``f = (width / 2) / tan(hfov / 2)``; the vertical field of view
  follows from the image's aspect ratio;
- the bearing of pixel column ``u`` is ``yaw + atan((u - width / 2) / f)`` in the body frame
  FRD (0 = forward, positive clockwise, to the right), `yaw` being the camera's mounting;
- a box's range is ``f * real_size / pixel_size``, from the class's size prior below, or from
  a depth source (stereo, ToF, a rangefinder) when one is configured and answers.

Range from size priors. A box cut by the image edge is too small in that direction, which
would make the object look further away than it is, so a cut dimension is used only when no
whole one is left; and where both are whole the nearer estimate is kept (a crouching person is
shorter than 1.7 m; a car seen head-on narrower than from the side). Widths are the smallest
usual width (seen from the front), so that the width estimate errs towards near. The priors
assume a camera looking roughly ahead (pitch within about 30 degrees of the horizon).

| class | height m | width m | note |
| --- | --- | --- | --- |
| person | 1.70 | 0.45 | adult standing; shoulders |
| bicycle | 1.10 | 0.60 | handlebar width |
| car | 1.50 | 1.75 | |
| motorcycle | 1.20 | 0.80 | |
| bus | 3.00 | 2.50 | |
| truck | 3.00 | 2.50 | |
| train | 3.80 | 2.90 | |
| dog | 0.60 | 0.25 | medium dog at the shoulder |
| cat | 0.30 | 0.12 | |
| horse | 1.60 | 0.50 | |
| sheep | 0.80 | 0.35 | |
| cow | 1.40 | 0.60 | |
| bird | 0.25 | 0.25 | pigeon/gull in flight, wingspan ~0.6 |
| kite | 0.80 | 0.80 | |
| umbrella | 1.00 | 1.00 | open |
| stop sign | 0.75 | 0.75 | |
| traffic light | 0.90 | 0.30 | the signal head |
| bench | 0.90 | 1.50 | |

Classes without a prior (a cup, a laptop) become obstacles only through a depth source.

OBSTACLE_DISTANCE, as the MAVLink common spec and ArduPilot's AP_Proximity_MAV read it:
`frame` MAV_FRAME_BODY_FRD, `increment` 5 (and `increment_f` 5.0), `angle_offset` 0, so
element ``i`` is the direction ``i * 5`` degrees clockwise from the nose; distances in cm;
``max_distance + 1`` means "no obstacle" (a sector the camera sees, clear to its range);
UINT16_MAX means "unknown / not used" (every sector outside the camera's field of view); a
value in ``min_distance..max_distance`` is an obstacle. The sensor type is
MAV_DISTANCE_SENSOR_UNKNOWN: a camera is none of the listed kinds, and ArduPilot ignores it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from companion.vision.detector import Detection

#: OBSTACLE_DISTANCE constants (checked against the MAVLink dialect in the tests).
SECTORS = 72
INCREMENT_DEG = 5
UINT16_MAX = 65535
MAV_FRAME_BODY_FRD = 12
MAV_DISTANCE_SENSOR_UNKNOWN = 4


@dataclass(frozen=True)
class SizePrior:
    """Typical size of a class in metres; `width_m` None: height only."""

    height_m: float
    width_m: float | None = None


#: Per-class size priors (see the module's table).
SIZE_PRIORS: Mapping[str, SizePrior] = {
    "person": SizePrior(1.70, 0.45),
    "bicycle": SizePrior(1.10, 0.60),
    "car": SizePrior(1.50, 1.75),
    "motorcycle": SizePrior(1.20, 0.80),
    "bus": SizePrior(3.00, 2.50),
    "truck": SizePrior(3.00, 2.50),
    "train": SizePrior(3.80, 2.90),
    "dog": SizePrior(0.60, 0.25),
    "cat": SizePrior(0.30, 0.12),
    "horse": SizePrior(1.60, 0.50),
    "sheep": SizePrior(0.80, 0.35),
    "cow": SizePrior(1.40, 0.60),
    "bird": SizePrior(0.25, 0.25),
    "kite": SizePrior(0.80, 0.80),
    "umbrella": SizePrior(1.00, 1.00),
    "stop sign": SizePrior(0.75, 0.75),
    "traffic light": SizePrior(0.90, 0.30),
    "bench": SizePrior(0.90, 1.50),
}


@dataclass(frozen=True)
class CameraGeometry:
    """A pinhole camera: image size, horizontal field of view, and its mounting on the body
    (`yaw_deg` clockwise from the nose; `pitch_down_deg` 0 = looking ahead, 90 = straight
    down). Pixels are square and the principal point is the image centre."""

    width: int = 640
    height: int = 480
    hfov_deg: float = 62.2  # Raspberry Pi Camera Module v2
    yaw_deg: float = 0.0
    pitch_down_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"hfov_deg must lie in (0, 180), got {self.hfov_deg}")
        if not -90.0 <= self.pitch_down_deg <= 90.0:
            raise ValueError(f"pitch_down_deg must lie in -90..90, got {self.pitch_down_deg}")

    @property
    def focal_px(self) -> float:
        """Focal length in pixels (same on both axes)."""
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def vfov_deg(self) -> float:
        """Vertical field of view implied by the aspect ratio."""
        return math.degrees(2.0 * math.atan((self.height / 2.0) / self.focal_px))

    def resized(self, width: int, height: int) -> CameraGeometry:
        """The same camera at another resolution (the field of view stays)."""
        if (width, height) == (self.width, self.height):
            return self
        return replace(self, width=int(width), height=int(height))

    def bearing_deg(self, u: float) -> float:
        """Body-frame bearing (FRD, -180..180, clockwise from the nose) of pixel column `u`."""
        angle = self.yaw_deg + math.degrees(math.atan((u - self.width / 2.0) / self.focal_px))
        return wrap_deg(angle)

    def ray_body(self, u: float, v: float) -> tuple[float, float, float]:
        """Unit direction (forward, right, down) in the body frame through pixel (u, v).
        Image right is body right turned by `yaw_deg`; image up is towards the nose for a
        camera looking straight down."""
        f = self.focal_px
        x_cam = (u - self.width / 2.0) / f  # right in the image
        y_cam = (v - self.height / 2.0) / f  # down in the image
        p = math.radians(self.pitch_down_deg)
        # Camera axes in a yaw-0 body frame: optical (cos p, 0, sin p), image-right (0, 1, 0),
        # image-down (-sin p, 0, cos p).
        fwd = math.cos(p) - y_cam * math.sin(p)
        right = x_cam
        down = math.sin(p) + y_cam * math.cos(p)
        yaw = math.radians(self.yaw_deg)
        fwd, right = (
            fwd * math.cos(yaw) - right * math.sin(yaw),
            fwd * math.sin(yaw) + right * math.cos(yaw),
        )
        norm = math.sqrt(fwd * fwd + right * right + down * down)
        return fwd / norm, right / norm, down / norm

    def off_vertical_deg(self, u: float, v: float) -> float:
        """Angle between the ray through pixel (u, v) and straight down (0 = nadir)."""
        down = self.ray_body(u, v)[2]
        return math.degrees(math.acos(max(-1.0, min(1.0, down))))

    def nadir_pixel(self) -> tuple[float, float] | None:
        """The pixel straight below the camera (possibly outside the image); None for a
        camera looking level or up. Assumes yaw 0 (a downward camera is not yawed)."""
        p = math.radians(self.pitch_down_deg)
        if math.sin(p) <= 1e-9:
            return None
        return self.width / 2.0, self.height / 2.0 + self.focal_px * math.cos(p) / math.sin(p)


def wrap_deg(angle: float) -> float:
    """An angle in degrees wrapped to -180 <= a < 180."""
    return (angle + 180.0) % 360.0 - 180.0


#: Optional range finder for a detection: metres, or None when it has no answer.
DepthSource = Callable[[Detection, CameraGeometry], "float | None"]


@dataclass(frozen=True)
class Obstacle:
    """One located object: its class, the bearings of its box's left/right edges and centre
    (body FRD degrees), its range in metres, and where the range came from ("prior" or
    "depth")."""

    class_name: str
    score: float
    bearing_deg: float
    left_deg: float
    right_deg: float
    range_m: float
    range_from: str
    box: tuple[float, float, float, float]


def range_from_prior(
    box: tuple[float, float, float, float], prior: SizePrior, geometry: CameraGeometry
) -> float | None:
    """Range in metres of a box of a class with `prior`, or None for a degenerate box."""
    x1, y1, x2, y2 = box
    f = geometry.focal_px
    edge = 1.0
    h_px, w_px = y2 - y1, x2 - x1
    estimates: list[tuple[bool, float]] = []  # (whole, range)
    if h_px > 0.5:
        cut = y1 <= edge or y2 >= geometry.height - edge
        estimates.append((not cut, f * prior.height_m / h_px))
    if prior.width_m is not None and w_px > 0.5:
        cut = x1 <= edge or x2 >= geometry.width - edge
        estimates.append((not cut, f * prior.width_m / w_px))
    if not estimates:
        return None
    whole = [r for ok, r in estimates if ok]
    return min(whole) if whole else min(r for _, r in estimates)


def locate(
    detections: Iterable[Detection],
    geometry: CameraGeometry,
    *,
    priors: Mapping[str, SizePrior] = SIZE_PRIORS,
    depth: DepthSource | None = None,
) -> list[Obstacle]:
    """Obstacles for the detections that have a range (from `depth` when it answers, else
    from the class's size prior); nearest first. Malformed boxes are skipped."""
    out: list[Obstacle] = []
    for det in detections:
        box = tuple(float(v) for v in det.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            continue
        x1, y1, x2, y2 = box
        if x2 < x1:
            x1, x2 = x2, x1
        if y2 < y1:
            y1, y2 = y2, y1
        x1, x2 = min(max(x1, 0.0), geometry.width), min(max(x2, 0.0), geometry.width)
        y1, y2 = min(max(y1, 0.0), geometry.height), min(max(y2, 0.0), geometry.height)
        clean = (x1, y1, x2, y2)
        range_m: float | None = None
        source = "prior"
        if depth is not None:
            try:
                measured = depth(det, geometry)
            except Exception:  # a depth source must not take the obstacle feed down
                measured = None
            if measured is not None and math.isfinite(measured) and measured > 0:
                range_m, source = float(measured), "depth"
        if range_m is None:
            prior = priors.get(det.class_name)
            if prior is None:
                continue
            range_m = range_from_prior(clean, prior, geometry)
            if range_m is None or not math.isfinite(range_m):
                continue
        out.append(
            Obstacle(
                det.class_name,
                float(det.score),
                geometry.bearing_deg((x1 + x2) / 2.0),
                geometry.bearing_deg(x1),
                geometry.bearing_deg(x2),
                range_m,
                source,
                clean,
            )
        )
    out.sort(key=lambda o: o.range_m)
    return out


def sectors_in_view(geometry: CameraGeometry) -> list[int]:
    """Indices of the 5-degree sectors whose centre the camera sees."""
    half = geometry.hfov_deg / 2.0
    return [
        i
        for i in range(SECTORS)
        if abs(wrap_deg(i * INCREMENT_DEG - geometry.yaw_deg)) <= half + 1e-9
    ]


def pack_sectors(
    obstacles: Iterable[Obstacle],
    geometry: CameraGeometry,
    min_distance_cm: int = 20,
    max_distance_cm: int = 4000,
) -> tuple[int, ...]:
    """The 72 OBSTACLE_DISTANCE distances (cm): UINT16_MAX outside the field of view,
    `max_distance_cm + 1` for a clear sector in view, else the nearest obstacle that spans
    the sector (clamped up to `min_distance_cm`; beyond `max_distance_cm` counts as clear)."""
    if not 0 <= min_distance_cm < max_distance_cm < UINT16_MAX - 1:
        raise ValueError("need 0 <= min_distance_cm < max_distance_cm < 65534")
    distances = [UINT16_MAX] * SECTORS
    visible = sectors_in_view(geometry)
    for i in visible:
        distances[i] = max_distance_cm + 1
    half = INCREMENT_DEG / 2.0
    for obstacle in obstacles:
        cm = obstacle.range_m * 100.0
        if not math.isfinite(cm) or cm > max_distance_cm:
            continue
        value = max(min_distance_cm, round(cm))
        left = obstacle.left_deg
        span = wrap_deg(obstacle.right_deg - left) % 360.0  # clockwise extent of the box
        for i in visible:
            # offset of the sector's interval start from the box's left edge, clockwise
            start = wrap_deg(i * INCREMENT_DEG - half - left) % 360.0
            end = start + INCREMENT_DEG
            if start <= span or end >= 360.0:
                distances[i] = min(distances[i], value)
    return tuple(distances)


@dataclass(frozen=True)
class ObstacleSummary:
    """What the camera sees around the vehicle, for the bus and the OBSTACLE_DISTANCE feed.

    `sectors`: the 72 distances in cm (see the module); `obstacles`: nearest first;
    `counts`: (class name, how many) pairs, most frequent first; `t`: when the frame was
    captured (the capture's clock)."""

    t: float
    sectors: tuple[int, ...]
    min_distance_cm: int
    max_distance_cm: int
    obstacles: tuple[Obstacle, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()
    increment_deg: int = INCREMENT_DEG
    angle_offset_deg: float = 0.0
    frame_index: int | None = None

    @property
    def nearest(self) -> Obstacle | None:
        """The nearest obstacle, if any."""
        return self.obstacles[0] if self.obstacles else None

    @property
    def nearest_m(self) -> float | None:
        """Range of the nearest obstacle in metres."""
        return self.obstacles[0].range_m if self.obstacles else None

    def count(self, class_name: str) -> int:
        """How many objects of a class were seen."""
        return dict(self.counts).get(class_name, 0)


@dataclass
class ObstacleMapper:
    """Turns each frame's detections into an `ObstacleSummary` with one configuration."""

    geometry: CameraGeometry = field(default_factory=CameraGeometry)
    priors: Mapping[str, SizePrior] = field(default_factory=lambda: dict(SIZE_PRIORS))
    depth: DepthSource | None = None
    min_distance_cm: int = 20
    max_distance_cm: int = 4000

    def summarize(
        self,
        detections: Iterable[Detection],
        t: float,
        frame_size: tuple[int, int] | None = None,
        frame_index: int | None = None,
    ) -> ObstacleSummary:
        """The summary of one frame; `frame_size` (width, height) when the frames are not
        the geometry's size."""
        detections = list(detections)
        geometry = self.geometry.resized(*frame_size) if frame_size else self.geometry
        obstacles = locate(detections, geometry, priors=self.priors, depth=self.depth)
        sectors = pack_sectors(obstacles, geometry, self.min_distance_cm, self.max_distance_cm)
        counts = Counter(d.class_name for d in detections)
        return ObstacleSummary(
            t=t,
            sectors=sectors,
            min_distance_cm=self.min_distance_cm,
            max_distance_cm=self.max_distance_cm,
            obstacles=tuple(obstacles),
            counts=tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            frame_index=frame_index,
        )


def obstacle_distance_fields(summary: ObstacleSummary, time_usec: int) -> dict:
    """Keyword arguments of MAVLink's OBSTACLE_DISTANCE for a summary (the feed in
    `firmware_bridge.obstacle_feed` builds the message from them)."""
    return {
        "time_usec": int(time_usec),
        "sensor_type": MAV_DISTANCE_SENSOR_UNKNOWN,
        "distances": list(summary.sectors),
        "increment": summary.increment_deg,
        "min_distance": summary.min_distance_cm,
        "max_distance": summary.max_distance_cm,
        "increment_f": float(summary.increment_deg),
        "angle_offset": float(summary.angle_offset_deg),
        "frame": MAV_FRAME_BODY_FRD,
    }
