"""Airspace from GeoJSON (RFC 7946): a FeatureCollection whose Polygon/MultiPolygon
features are no-fly zones (`"role": "no-fly"`) or the one operating area
(`"role": "operating-area"`).

The file comes from outside, so it is hostile: every bound is stated and checked (file
size, feature and vertex counts), every value is type-checked, coordinates must be finite
WGS-84 degrees, rings closed (RFC 7946 3.1.6) with at least four positions, and polygons
valid (no self-intersection, shapely's `is_valid_reason`). Any problem raises
`AirspaceError` naming the file, the feature (index and id) and the reason.

Zone properties: `floor_m` (default 0) and `ceiling_m` (default unlimited), metres above
home; the operating area may carry `ceiling_m`. Features that are not airspace (no `role`
and a non-polygon geometry, such as order points) are returned in `Airspace.others`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from shapely.geometry import MultiPolygon, Polygon
from shapely.validation import explain_validity

from companion.routing.airspace import Airspace, AirspaceError, OperatingArea, Zone

MAX_BYTES = 8 * 1024 * 1024
MAX_FEATURES = 5_000
MAX_RING_VERTICES = 10_000
MAX_TOTAL_VERTICES = 200_000
ROLES = ("no-fly", "operating-area")


def load_airspace(path: str | Path) -> Airspace:
    """Read and parse an airspace file, refusing one larger than `MAX_BYTES` unread."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise AirspaceError(f"{p}: {size} bytes, more than the {MAX_BYTES} allowed")
        data = p.read_bytes()
    except OSError as exc:
        raise AirspaceError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_airspace(data, origin=str(p))


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_airspace(source: str | bytes, *, origin: str = "airspace") -> Airspace:
    """Parse GeoJSON text; `origin` names the source in error messages."""
    if len(source) > MAX_BYTES:
        raise AirspaceError(f"{origin}: {len(source)} bytes, more than the {MAX_BYTES} allowed")
    try:
        doc = json.loads(source, parse_constant=_reject_constant)
    except RecursionError:
        raise AirspaceError(f"{origin}: not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, huge integers
        raise AirspaceError(f"{origin}: not JSON: {exc}") from None
    return airspace_from_geojson(doc, origin=origin)


def airspace_from_geojson(doc: Any, *, origin: str = "airspace") -> Airspace:
    """Build an `Airspace` from decoded GeoJSON (e.g. an orders file read by the caller)."""
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise AirspaceError(f"{origin}: top level must be a GeoJSON FeatureCollection")
    features = doc.get("features")
    if not isinstance(features, list):
        raise AirspaceError(f"{origin}: 'features' must be a list")
    if len(features) > MAX_FEATURES:
        raise AirspaceError(
            f"{origin}: {len(features)} features, more than the {MAX_FEATURES} allowed"
        )
    budget = [MAX_TOTAL_VERTICES]
    zones: list[Zone] = []
    areas: list[OperatingArea] = []
    others: list[tuple[int, dict[str, Any]]] = []
    for index, feature in enumerate(features):
        where = f"{origin}: feature {index}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AirspaceError(f"{where}: not a GeoJSON Feature object")
        fid = _feature_id(feature, where)
        if fid:
            where = f"{where} ({fid!r})"
        props = feature.get("properties")
        if props is None:
            props = {}
        if not isinstance(props, dict):
            raise AirspaceError(f"{where}: 'properties' must be an object or null")
        geometry = feature.get("geometry")
        gtype = geometry.get("type") if isinstance(geometry, dict) else None
        role = props.get("role")
        if role is None and gtype not in ("Polygon", "MultiPolygon"):
            others.append((index, feature))
            continue
        if role not in ROLES:
            raise AirspaceError(f"{where}: 'role' must be one of {', '.join(ROLES)}, got {role!r}")
        if gtype not in ("Polygon", "MultiPolygon"):
            raise AirspaceError(f"{where}: a {role} needs a Polygon or MultiPolygon geometry")
        footprint = _footprint(geometry, where, budget)
        if role == "operating-area":
            if not isinstance(footprint, Polygon):
                raise AirspaceError(f"{where}: the operating area must be a single Polygon")
            _only(props, ("role", "name", "ceiling_m"), where)
            ceiling = _optional_height(props, "ceiling_m", where)
            if ceiling is not None and ceiling <= 0:
                raise AirspaceError(f"{where}: ceiling_m must be above 0, got {ceiling:g}")
            areas.append(OperatingArea(index, fid, footprint, ceiling))
        else:
            _only(props, ("role", "name", "floor_m", "ceiling_m"), where)
            floor = _optional_height(props, "floor_m", where) or 0.0
            ceiling = _optional_height(props, "ceiling_m", where)
            if ceiling is not None and ceiling <= floor:
                raise AirspaceError(
                    f"{where}: ceiling_m ({ceiling:g}) must be above floor_m ({floor:g})"
                )
            zones.append(Zone(index, fid, footprint, floor, ceiling))
    if len(areas) != 1:
        found = ", ".join(str(a.index) for a in areas) or "none"
        raise AirspaceError(
            f"{origin}: needs exactly one feature with role 'operating-area' (found: {found})"
        )
    return Airspace(areas[0], tuple(zones), tuple(others))


def _feature_id(feature: dict[str, Any], where: str) -> str:
    fid = feature.get("id")
    props = feature.get("properties")
    if fid is None and isinstance(props, dict):
        fid = props.get("name")
    if fid is None:
        return ""
    if isinstance(fid, bool) or not isinstance(fid, (str, int)):
        raise AirspaceError(f"{where}: 'id'/'name' must be a string or integer")
    text = str(fid)
    if len(text) > 200 or not text.isprintable():
        raise AirspaceError(f"{where}: 'id'/'name' must be printable, at most 200 characters")
    return text


def _only(props: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in props if k not in allowed)
    if unknown:
        raise AirspaceError(
            f"{where}: unknown properties {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(allowed)})"
        )


def _optional_height(props: dict[str, Any], key: str, where: str) -> float | None:
    value = props.get(key)
    if value is None:
        return None
    value = _finite(value, f"{where}: {key}")
    if value < 0 or value > 10_000:
        raise AirspaceError(f"{where}: {key} must be between 0 and 10000 m, got {value!r}")
    return value


def _footprint(geometry: dict[str, Any], where: str, budget: list[int]) -> Polygon | MultiPolygon:
    coords = geometry.get("coordinates")
    if geometry["type"] == "Polygon":
        polygons = [_polygon(coords, where, budget)]
    else:
        if not isinstance(coords, list) or not coords:
            raise AirspaceError(f"{where}: MultiPolygon coordinates must be a non-empty list")
        polygons = [_polygon(c, f"{where} polygon {i}", budget) for i, c in enumerate(coords)]
    shape = polygons[0] if geometry["type"] == "Polygon" else MultiPolygon(polygons)
    if not shape.is_valid:
        raise AirspaceError(f"{where}: invalid geometry: {explain_validity(shape)}")
    return shape


def _polygon(coords: Any, where: str, budget: list[int]) -> Polygon:
    if not isinstance(coords, list) or not coords:
        raise AirspaceError(f"{where}: Polygon coordinates must be a non-empty list of rings")
    rings = [_ring(r, f"{where} ring {i}", budget) for i, r in enumerate(coords)]
    poly = Polygon(rings[0], rings[1:])
    if not poly.is_valid:
        raise AirspaceError(f"{where}: invalid polygon: {explain_validity(poly)}")
    if poly.area <= 0:
        raise AirspaceError(f"{where}: polygon has no area")
    return poly


def _ring(ring: Any, where: str, budget: list[int]) -> list[tuple[float, float]]:
    if not isinstance(ring, list):
        raise AirspaceError(f"{where}: a ring must be a list of positions")
    if len(ring) > MAX_RING_VERTICES:
        raise AirspaceError(
            f"{where}: {len(ring)} positions, more than the {MAX_RING_VERTICES} allowed"
        )
    budget[0] -= len(ring)
    if budget[0] < 0:
        raise AirspaceError(f"{where}: more than {MAX_TOTAL_VERTICES} positions in the file")
    if len(ring) < 4:
        raise AirspaceError(f"{where}: a ring needs at least 4 positions, got {len(ring)}")
    points = [_position(p, f"{where} position {i}") for i, p in enumerate(ring)]
    if points[0] != points[-1]:
        raise AirspaceError(f"{where}: ring is not closed (first and last positions differ)")
    return points


def _position(pos: Any, where: str) -> tuple[float, float]:
    if not isinstance(pos, list) or len(pos) not in (2, 3):
        raise AirspaceError(f"{where}: a position must be [lon, lat] or [lon, lat, alt]")
    lon, lat = (_finite(v, f"{where}: coordinates") for v in pos[:2])
    if len(pos) == 3:
        _finite(pos[2], f"{where}: coordinates")
    if not -180.0 <= lon <= 180.0 or not -90.0 <= lat <= 90.0:
        raise AirspaceError(f"{where}: ({lon}, {lat}) is outside lon -180..180, lat -90..90")
    return lon, lat


def _finite(value: Any, what: str) -> float:
    """A JSON number as a finite float; booleans, strings and overflowing integers refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AirspaceError(f"{what} must be numbers, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise AirspaceError(f"{what} must be finite numbers, got {_short(value)}")
    return number


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
