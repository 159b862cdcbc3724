"""Airspace for route planning: no-fly zones, the operating area, the legal ceiling of each
regulatory profile, and the check that refuses a plan flown above a ceiling.

Geometry is kept in WGS-84 lon/lat (GeoJSON order) as parsed from the operator's file
(`companion.routing.geojson`) and projected into a `LocalFrame` when metres are needed.
Altitudes are metres above home, which stands in for above ground level (AGL) over the
flat delivery areas this drone serves.

A no-fly zone is a footprint with a vertical band: it forbids flight from `floor_m` up to
`ceiling_m` (unlimited when absent). Routing never overflies a zone it could reach: a zone
whose floor is at or below the cruise altitude is an obstacle over its whole footprint
(legs climb and descend vertically at their ends, so a band below cruise is flown through
too). Under a zone whose floor is above the cruise altitude a leg may pass; the floor is then
that leg's ceiling, and `altitude_violations` checks it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import shapely
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

from companion.routing.frame import LocalFrame

FEET_M = 0.3048


class AirspaceError(ValueError):
    """Airspace input or a route request was refused; the message names the feature, point
    or leg and the reason."""


class UnreachableError(AirspaceError):
    """A point that cannot be flown to: inside or too near a zone, outside the operating
    area, or walled off from the other points. `label` names the point."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label}: {reason}")
        self.label = label
        self.reason = reason


class CeilingError(AirspaceError):
    """A leg flown above a legal or zone ceiling; `violations` lists every one found."""

    def __init__(self, violations: Sequence[str]) -> None:
        super().__init__("; ".join(violations))
        self.violations = tuple(violations)


@dataclass(frozen=True)
class Zone:
    """One no-fly zone. `index` is the feature's position in its FeatureCollection, `fid`
    its GeoJSON id or name (either may be empty)."""

    index: int
    fid: str
    footprint: BaseGeometry  # Polygon or MultiPolygon, lon/lat degrees
    floor_m: float = 0.0
    ceiling_m: float | None = None

    @property
    def label(self) -> str:
        return (
            f"no-fly zone {self.fid!r} (feature {self.index})"
            if self.fid
            else (f"no-fly zone (feature {self.index})")
        )


@dataclass(frozen=True)
class OperatingArea:
    """Where the drone may fly at all; `ceiling_m` is the operator's approval ceiling when
    it is lower than the regulatory profile's."""

    index: int
    fid: str
    footprint: BaseGeometry  # Polygon, lon/lat degrees
    ceiling_m: float | None = None


@dataclass(frozen=True)
class Airspace:
    """The parsed airspace file. `others` holds the features that are not airspace (such
    as order points), by index, for the caller that reads them; nothing is dropped."""

    area: OperatingArea
    zones: tuple[Zone, ...]
    others: tuple[tuple[int, dict[str, Any]], ...] = field(default=())

    def zones_reached_at(self, altitude_m: float | None) -> tuple[Zone, ...]:
        """The zones that are obstacles for flight at `altitude_m` (all when None)."""
        if altitude_m is None:
            return self.zones
        return tuple(z for z in self.zones if z.floor_m <= altitude_m)


@dataclass(frozen=True)
class RegulatoryProfile:
    name: str
    ceiling_m: float
    rule: str


PROFILES: dict[str, RegulatoryProfile] = {
    p.name: p
    for p in (
        RegulatoryProfile("faa-part107", 400 * FEET_M, "14 CFR 107.51(b): 400 ft AGL"),
        RegulatoryProfile(
            "easa-open", 120.0, "Regulation (EU) 2019/947 UAS.OPEN.010(2): 120 m AGL"
        ),
        RegulatoryProfile(
            "dgca", 400 * FEET_M, "India Drone Rules 2021: 400 ft AGL outside restricted zones"
        ),
    )
}


def regulatory_profile(name: str) -> RegulatoryProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise AirspaceError(f"unknown regulatory profile {name!r} (known: {known})") from None


@dataclass(frozen=True)
class AltitudeLeg:
    """A leg as the ceiling check sees it: its name for messages, its path (lat, lon
    degrees) and the altitude it is flown at, metres above home."""

    label: str
    path: tuple[tuple[float, float], ...]
    altitude_m: float


def altitude_violations(
    legs: Sequence[AltitudeLeg],
    profile: RegulatoryProfile,
    airspace: Airspace,
    frame: LocalFrame,
) -> list[str]:
    """Every way the legs break a ceiling: the profile's, the operating area's, or the floor
    of a zone a leg passes under. Empty when all hold."""
    zones_xy = [(z, frame.project(z.footprint)) for z in airspace.zones]
    for _, geom in zones_xy:
        shapely.prepare(geom)
    out: list[str] = []
    for leg in legs:
        alt = leg.altitude_m
        if not (isinstance(alt, (int, float)) and math.isfinite(alt)) or alt < 0:
            out.append(f"leg {leg.label!r}: altitude {alt!r} m is not a height above home")
            continue
        if alt > profile.ceiling_m:
            out.append(
                f"leg {leg.label!r} at {alt:g} m is above the {profile.name} ceiling of "
                f"{profile.ceiling_m:g} m ({profile.rule})"
            )
        area_ceiling = airspace.area.ceiling_m
        if area_ceiling is not None and alt > area_ceiling:
            out.append(
                f"leg {leg.label!r} at {alt:g} m is above the operating area's ceiling of "
                f"{area_ceiling:g} m"
            )
        if not leg.path:
            continue
        pts = [frame.to_xy(lat, lon) for lat, lon in leg.path]
        line = LineString(pts) if len(pts) > 1 else shapely.Point(pts[0])
        for zone, geom in zones_xy:
            if alt >= zone.floor_m and geom.intersects(line):
                top = "unlimited" if zone.ceiling_m is None else f"{zone.ceiling_m:g} m"
                out.append(
                    f"leg {leg.label!r} at {alt:g} m enters {zone.label}, closed from "
                    f"{zone.floor_m:g} m to {top}: the ceiling there is below "
                    f"{zone.floor_m:g} m"
                )
    return out


def check_altitudes(
    legs: Sequence[AltitudeLeg],
    profile: RegulatoryProfile,
    airspace: Airspace,
    frame: LocalFrame,
) -> None:
    """Refuse (raise `CeilingError`) a plan with any leg above a ceiling."""
    violations = altitude_violations(legs, profile, airspace, frame)
    if violations:
        raise CeilingError(violations)
