"""Geofence and rally points as ArduPilot stores them: building, checking and comparing.

The transfer itself is `mission_protocol` (MAV_MISSION_TYPE_FENCE and _RALLY go through the
same MISSION_COUNT / MISSION_REQUEST_INT / MISSION_ITEM_INT exchange as a flight plan). This
module holds what is particular to the two plan types, as pure functions and values:

- `FenceDefinition` becomes the MISSION_ITEM_INT list ArduPilot expects and is rebuilt from
  the list it sends back; `RallyPoint` likewise;
- `fence_problems` / `rally_problems` refuse, before anything is sent, every definition
  ArduPilot would refuse (so a refusal names the polygon and the reason, not just
  MAV_MISSION_ERROR) and a few it would take but that cannot mean what the caller wants;
- `fence_differences` / `rally_differences` compare what was read back with what was sent,
  exactly on the integer coordinates, on the fields ArduPilot keeps.

ArduPilot's behaviour, from its source (libraries/GCS_MAVLink/MissionItemProtocol_Fence.cpp,
MissionItemProtocol_Rally.cpp, MissionItemProtocol.cpp, libraries/AC_Fence/
AC_PolyFence_loader.cpp, libraries/AP_Rally/AP_Rally.cpp, libraries/StorageManager/
StorageManager.cpp):

- Fence items must use a GLOBAL, GLOBAL_RELATIVE_ALT or GLOBAL_TERRAIN_ALT frame (or their
  _INT forms), else MAV_MISSION_UNSUPPORTED_FRAME; a polygon vertex with param1 > 255 is
  MAV_MISSION_INVALID_PARAM1 (convert_MISSION_ITEM_INT_to_AC_PolyFenceItem).
- The whole list is checked only after the last item (MissionItemProtocol_Fence::complete ->
  AC_PolyFence_loader::write_fence -> validate_fence): polygons of fewer than 3 vertices,
  a polygon run whose items disagree on type or count, a non-positive circle radius, more
  than one return point, or a latitude/longitude out of range end the upload with
  MAV_MISSION_ERROR and a STATUSTEXT ("Invalid vertex count (2)", "Non-positive circle
  radius", "Multiple return points", "Bad lat or lon", ...), and the old fence stays.
- Storage: a MISSION_COUNT above max_items() = fence storage bytes / 8 is MAV_MISSION_NO_SPACE
  ("Only 70 items are supported"); a fence that passes that but needs more bytes than the
  storage holds (fence_storage_space_required: 4 header bytes, then 2 + 8 per vertex per
  polygon, 13 per circle, 9 for the return point) is MAV_MISSION_ERROR ("Fence exceeds
  storage size"). With 16 or 32 KiB of storage (Pixhawks, SITL) the fence area is
  48 + 256 + 256 = 560 bytes: 70 items.
- Read back, every fence item has frame 0, z 0 and only param1 (the vertex count, or the
  circle radius, stored as a float32); x/y are the integers sent. Items come back in the
  order they were sent.
- FENCE_TOTAL is only the legacy (FENCE_POINT) protocol's count: write_fence sets it to the
  number of polygon vertices and circles + 2 (0 below 3) and it is not used here.
- Rally points: only MAV_CMD_NAV_RALLY_POINT (else UNSUPPORTED), latitude/longitude checked
  (INVALID_PARAM5_X / 6_Y), altitude stored as an int16 of metres (outside -32768..32767
  INVALID_PARAM7; a fraction is dropped, so only whole metres read back identical), frames
  GLOBAL (read back 0), GLOBAL_RELATIVE_ALT (3), GLOBAL_TERRAIN_ALT (10), _INT forms read
  back as the plain ones; storage of 690 bytes at 15 per point: 46 points
  (AP_Rally::get_rally_max), more is MAV_MISSION_NO_SPACE.
- Neither upload is refused while armed (MissionItemProtocol::handle_mission_count has no
  arming check); a fence uploaded in flight replaces the old one at once.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from firmware_bridge.dialect import mavlink
from firmware_bridge.mission_protocol import MissionItem

C = mavlink
FENCE = C.MAV_MISSION_TYPE_FENCE
RALLY = C.MAV_MISSION_TYPE_RALLY

#: Fence storage on boards with 16/32 KiB of storage, SITL included (StorageManager layout).
FENCE_STORAGE_BYTES = 560
#: AC_PolyFence_loader::max_items: storage bytes / sizeof(Vector2l).
FENCE_MAX_ITEMS = FENCE_STORAGE_BYTES // 8
#: AP_Rally::get_rally_max on the same boards: 690 bytes / sizeof(RallyLocation) (15).
RALLY_MAX_POINTS = 46
MAX_VERTICES = 255  # param1 > 255 is MAV_MISSION_INVALID_PARAM1; vertex_count is a uint8
_LAT_MAX_E7 = 900_000_000
_LON_MAX_E7 = 1_800_000_000
_INT16 = (-32768, 32767)

_POLYGON_COMMANDS = {
    True: C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION,
    False: C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_EXCLUSION,
}
_CIRCLE_COMMANDS = {
    True: C.MAV_CMD_NAV_FENCE_CIRCLE_INCLUSION,
    False: C.MAV_CMD_NAV_FENCE_CIRCLE_EXCLUSION,
}
#: MISSION_ITEM_INT frame -> the frame ArduPilot reads a rally point back with.
RALLY_FRAMES = {
    C.MAV_FRAME_GLOBAL: C.MAV_FRAME_GLOBAL,
    C.MAV_FRAME_GLOBAL_INT: C.MAV_FRAME_GLOBAL,
    C.MAV_FRAME_GLOBAL_RELATIVE_ALT: C.MAV_FRAME_GLOBAL_RELATIVE_ALT,
    C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT: C.MAV_FRAME_GLOBAL_RELATIVE_ALT,
    C.MAV_FRAME_GLOBAL_TERRAIN_ALT: C.MAV_FRAME_GLOBAL_TERRAIN_ALT,
    C.MAV_FRAME_GLOBAL_TERRAIN_ALT_INT: C.MAV_FRAME_GLOBAL_TERRAIN_ALT,
}

LatLonE7 = tuple[int, int]


def to_e7(lat: float, lon: float) -> LatLonE7:
    """Degrees to the 1e-7 degree integers MISSION_ITEM_INT carries; ValueError for a
    coordinate that is not a finite number."""
    for name, value in (("latitude", lat), ("longitude", lon)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} {value!r} is not a finite number")
    return round(lat * 1e7), round(lon * 1e7)


_FLT_EPSILON = 1.1920929e-07  # AP_Math is_positive(x): x >= FLT_EPSILON


def _radius_ok(radius: object) -> bool:
    """A circle radius ArduPilot stores as a positive float32 (validate_fence)."""
    if not isinstance(radius, (int, float)) or isinstance(radius, bool):
        return False
    try:
        stored = struct.unpack("<f", struct.pack("<f", radius))[0]
    except OverflowError:
        return False
    return math.isfinite(stored) and stored >= _FLT_EPSILON


@dataclass(frozen=True)
class FencePolygon:
    """A polygon fence: the vehicle must stay inside it (inclusion) or out of it."""

    vertices: tuple[LatLonE7, ...]
    inclusion: bool

    @classmethod
    def from_degrees(cls, vertices: Iterable[tuple[float, float]], inclusion: bool) -> FencePolygon:
        """From (lat, lon) pairs in degrees; not closed (the last vertex is not the first)."""
        return cls(tuple(to_e7(lat, lon) for lat, lon in vertices), inclusion)


@dataclass(frozen=True)
class FenceCircle:
    """A circular fence around a centre, `radius_m` metres (stored as a float32)."""

    center: LatLonE7
    radius_m: float
    inclusion: bool

    def __post_init__(self) -> None:
        # The radius is kept as the float32 ArduPilot stores, so that a circle equals its own
        # read-back; a value that is no float32 is left for `fence_problems` to name.
        radius = self.radius_m
        if isinstance(radius, (int, float)) and not isinstance(radius, bool):
            with contextlib.suppress(OverflowError):
                object.__setattr__(
                    self, "radius_m", struct.unpack("<f", struct.pack("<f", radius))[0]
                )

    @classmethod
    def from_degrees(cls, lat: float, lon: float, radius_m: float, inclusion: bool) -> FenceCircle:
        """From a centre in degrees."""
        return cls(to_e7(lat, lon), radius_m, inclusion)


@dataclass(frozen=True)
class FenceDefinition:
    """Everything of MAV_MISSION_TYPE_FENCE: polygons, circles, an optional return point.

    Item order is polygons, circles, then the return point; ArduPilot keeps the order, so a
    definition equals `FenceDefinition.from_items` of its read-back."""

    polygons: tuple[FencePolygon, ...] = ()
    circles: tuple[FenceCircle, ...] = ()
    return_point: LatLonE7 | None = None

    def items(self) -> list[MissionItem]:
        """The MISSION_ITEM_INT list to upload (seq by position). Call `fence_problems`
        first: this builds whatever it is given."""
        out: list[MissionItem] = []
        frame = C.MAV_FRAME_GLOBAL_INT

        def add(command: int, point: LatLonE7, param1: float) -> None:
            out.append(
                MissionItem(
                    len(out), frame, command, 0, 1, param1, 0.0, 0.0, 0.0, *point, 0.0, FENCE
                )
            )

        for polygon in self.polygons:
            for vertex in polygon.vertices:
                add(_POLYGON_COMMANDS[polygon.inclusion], vertex, len(polygon.vertices))
        for circle in self.circles:
            add(_CIRCLE_COMMANDS[circle.inclusion], circle.center, circle.radius_m)
        if self.return_point is not None:
            add(C.MAV_CMD_NAV_FENCE_RETURN_POINT, self.return_point, 0.0)
        return out

    @classmethod
    def from_items(cls, items: Sequence[MissionItem]) -> FenceDefinition:
        """Rebuild a definition from a downloaded FENCE list; ValueError names the first item
        that does not fit (an unknown command, a polygon run cut short or mixed)."""
        polygons: list[FencePolygon] = []
        circles: list[FenceCircle] = []
        return_point: LatLonE7 | None = None
        i = 0
        while i < len(items):
            item = items[i]
            inclusion = item.command in (
                C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION,
                C.MAV_CMD_NAV_FENCE_CIRCLE_INCLUSION,
            )
            if item.command in _POLYGON_COMMANDS.values():
                count = item.param1
                if not count.is_integer() or count < 3:
                    raise ValueError(f"fence item {i}: polygon vertex count {count:g}")
                run = items[i : i + int(count)]
                if len(run) != count or any(
                    v.command != item.command or v.param1 != count for v in run
                ):
                    raise ValueError(f"fence item {i}: polygon of {count:g} vertices cut short")
                polygons.append(FencePolygon(tuple((v.x, v.y) for v in run), inclusion))
                i += len(run)
                continue
            if item.command in _CIRCLE_COMMANDS.values():
                circles.append(FenceCircle((item.x, item.y), item.param1, inclusion))
            elif item.command == C.MAV_CMD_NAV_FENCE_RETURN_POINT and return_point is None:
                return_point = (item.x, item.y)
            else:
                raise ValueError(f"fence item {i}: unexpected command {item.command}")
            i += 1
        return cls(tuple(polygons), tuple(circles), return_point)


def _latlon_problem(point: object) -> str | None:
    if (
        not isinstance(point, tuple)
        or len(point) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in point)
    ):
        return f"{point!r} is not a (lat, lon) pair of 1e-7 degree integers"
    lat, lon = point
    # check_latlng (AP_Math/location.cpp): |lat| <= 90e7, |lon| <= 180e7.
    if abs(lat) > _LAT_MAX_E7:
        return f"latitude {lat / 1e7:.7f} is outside -90..90"
    if abs(lon) > _LON_MAX_E7:
        return f"longitude {lon / 1e7:.7f} is outside -180..180"
    return None


def _segments_cross(a: LatLonE7, b: LatLonE7, c: LatLonE7, d: LatLonE7) -> bool:
    """Whether segments ab and cd share a point (exact, on the integers)."""

    def orient(p: LatLonE7, q: LatLonE7, r: LatLonE7) -> int:
        v = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        return (v > 0) - (v < 0)

    def on(p: LatLonE7, q: LatLonE7, r: LatLonE7) -> bool:
        return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(
            p[1], q[1]
        )

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    if o1 != o2 and o3 != o4:
        return True
    return (
        (o1 == 0 and on(a, b, c))
        or (o2 == 0 and on(a, b, d))
        or (o3 == 0 and on(c, d, a))
        or (o4 == 0 and on(c, d, b))
    )


def _polygon_problem(vertices: tuple[LatLonE7, ...]) -> str | None:
    n = len(vertices)
    # validate_fence: "Invalid vertex count" below 3; the item's param1 is at most 255.
    if not 3 <= n <= MAX_VERTICES:
        return f"{n} vertices; ArduPilot takes 3..{MAX_VERTICES}"
    for k, vertex in enumerate(vertices):
        problem = _latlon_problem(vertex)
        if problem is not None:
            return f"vertex {k}: {problem}"
    # Our own rule: ArduPilot stores a self-touching polygon, but its inside is then not the
    # area the operator drew, so it is refused here.
    edges = [(vertices[k], vertices[(k + 1) % n]) for k in range(n)]
    for k in range(n):
        for m in range(k + 1, n):
            adjacent = m == k + 1 or (k == 0 and m == n - 1)
            if adjacent:
                if edges[k][0] == edges[k][1]:
                    return f"vertices {k} and {k + 1} are the same point"
                continue
            if _segments_cross(*edges[k], *edges[m]):
                return f"edges {k} and {m} cross or touch (the polygon is not simple)"
    return None


def storage_bytes(definition: FenceDefinition) -> int:
    """Bytes ArduPilot needs to store the fence (fence_storage_space_required)."""
    return (
        4
        + sum(2 + 8 * len(p.vertices) for p in definition.polygons)
        + 13 * len(definition.circles)
        + (9 if definition.return_point is not None else 0)
    )


def fence_problems(
    definition: FenceDefinition,
    *,
    max_items: int = FENCE_MAX_ITEMS,
    storage: int = FENCE_STORAGE_BYTES,
) -> list[str]:
    """Why ArduPilot would refuse this fence (or why we do), one line per problem; empty when
    it can be uploaded. `max_items`/`storage` are the flight controller's (see module doc)."""
    problems: list[str] = []
    for k, polygon in enumerate(definition.polygons):
        kind = "inclusion" if polygon.inclusion else "exclusion"
        problem = _polygon_problem(tuple(polygon.vertices))
        if problem is not None:
            problems.append(f"polygon {k} ({kind}): {problem}")
    for k, circle in enumerate(definition.circles):
        kind = "inclusion" if circle.inclusion else "exclusion"
        problem = _latlon_problem(circle.center)
        radius = circle.radius_m
        if problem is not None:
            problems.append(f"circle {k} ({kind}): centre {problem}")
        # validate_fence: "Non-positive circle radius"; a NaN or infinite one is never meant.
        elif not _radius_ok(radius):
            problems.append(f"circle {k} ({kind}): radius {radius!r} m is not a positive number")
    if definition.return_point is not None:
        problem = _latlon_problem(definition.return_point)
        if problem is not None:
            problems.append(f"return point: {problem}")
    count = sum(len(p.vertices) for p in definition.polygons) + len(definition.circles)
    count += definition.return_point is not None
    if count > max_items:
        problems.append(f"{count} fence items; the flight controller stores at most {max_items}")
    elif storage_bytes(definition) > storage:
        problems.append(
            f"the fence needs {storage_bytes(definition)} bytes of storage; the flight "
            f"controller has {storage} (2 + 8 per polygon vertex, 13 per circle, 4 in all)"
        )
    return problems


@dataclass(frozen=True)
class RallyPoint:
    """A rally point: RTL may go here instead of home (AP_Rally). `alt_m` is whole metres
    (ArduPilot stores an int16) in `frame`, above home by default."""

    position: LatLonE7
    alt_m: int
    frame: int = C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT

    @classmethod
    def from_degrees(
        cls, lat: float, lon: float, alt_m: int, frame: int = C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT
    ) -> RallyPoint:
        """From a position in degrees."""
        return cls(to_e7(lat, lon), alt_m, frame)

    def item(self, seq: int) -> MissionItem:
        """The MISSION_ITEM_INT for this point."""
        return MissionItem(
            seq, self.frame, C.MAV_CMD_NAV_RALLY_POINT, 0, 1, 0.0, 0.0, 0.0, 0.0,
            *self.position, float(self.alt_m), RALLY,
        )  # fmt: skip


@dataclass(frozen=True)
class AutopilotLimits:
    """What the flight controller must hold before arming: built from an airspace by
    `companion.routing.limits`, carried by the mission plan, uploaded by its preflight.
    `fence` and `rally` go up through `Vehicle.upload_fence` / `upload_rally`, `params`
    through PARAM_SET; `notes` say where the fence differs from the airspace (always on the
    safe side) and why."""

    fence: FenceDefinition
    rally: tuple[RallyPoint, ...]
    params: dict[str, float]
    notes: tuple[str, ...]


def rally_problems(
    points: Sequence[RallyPoint], *, max_points: int = RALLY_MAX_POINTS
) -> list[str]:
    """Why ArduPilot would refuse these rally points, or not read them back identical."""
    problems: list[str] = []
    if len(points) > max_points:
        problems.append(
            f"{len(points)} rally points; the flight controller stores at most {max_points}"
        )
    for k, point in enumerate(points):
        problem = _latlon_problem(point.position)
        if problem is not None:
            problems.append(f"rally point {k}: {problem}")
        alt = point.alt_m
        if not isinstance(alt, int) or isinstance(alt, bool) or not _INT16[0] <= alt <= _INT16[1]:
            problems.append(
                f"rally point {k}: altitude {alt!r} is not whole metres in -32768..32767 "
                "(ArduPilot stores an int16)"
            )
        if point.frame not in RALLY_FRAMES:
            problems.append(f"rally point {k}: frame {point.frame} is not a GLOBAL frame")
    return problems


def _coordinates(item: MissionItem) -> str:
    return f"({item.x}, {item.y})"


def fence_differences(sent: Sequence[MissionItem], read: Sequence[MissionItem]) -> list[str]:
    """How a read-back FENCE list differs from the one sent, on what ArduPilot keeps: the
    command, x and y exactly, param1 (vertex count or float32 radius). Empty when equal."""
    if len(sent) != len(read):
        return [f"sent {len(sent)} fence items, read back {len(read)}"]
    out = []
    for a, b in zip(sent, read, strict=True):
        if a.command != b.command:
            out.append(f"fence item {a.seq}: command {a.command} sent, {b.command} read back")
        elif (a.x, a.y) != (b.x, b.y):
            out.append(f"fence item {a.seq}: {_coordinates(a)} sent, {_coordinates(b)} read back")
        elif a.param1 != b.param1:
            out.append(f"fence item {a.seq}: param1 {a.param1:g} sent, {b.param1:g} read back")
    return out


def rally_differences(sent: Sequence[MissionItem], read: Sequence[MissionItem]) -> list[str]:
    """How a read-back RALLY list differs from the one sent: command, x, y and z exactly, and
    the frame as ArduPilot reads it back (`RALLY_FRAMES`). Empty when equal."""
    if len(sent) != len(read):
        return [f"sent {len(sent)} rally points, read back {len(read)}"]
    out = []
    for a, b in zip(sent, read, strict=True):
        if a.command != b.command:
            out.append(f"rally point {a.seq}: command {a.command} sent, {b.command} read back")
        elif (a.x, a.y, a.z) != (b.x, b.y, b.z):
            out.append(
                f"rally point {a.seq}: {_coordinates(a)} at {a.z:g} m sent, "
                f"{_coordinates(b)} at {b.z:g} m read back"
            )
        elif RALLY_FRAMES.get(a.frame) != b.frame:
            out.append(f"rally point {a.seq}: frame {a.frame} sent, {b.frame} read back")
    return out
